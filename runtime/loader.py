"""Load one pipeline stage's weights from a Hugging Face folder or a GGUF file.

    stage, config = load_stage("smollm2-135m", start=0, end=15)
    stage, config = load_stage("/models/llama-3-8b", start=16, end=32, dtype=torch.bfloat16)

Only the tensors of the stage's layer range are read: safetensors through ``safe_open`` (one
``get_tensor`` per needed name), GGUF through the memory-mapped reader, dequantizing just the
needed tensors. Every problem with the input (unknown path, corrupt or truncated file, missing
tensor, wrong shape) raises ``ValueError`` naming it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from helix.kernels import resolve_attention

from .model import LlamaStage
from .model_config import ModelConfig, gguf_metadata, open_gguf, resolve_model_path

# GGUF per-layer suffix -> HF per-layer suffix (llama.cpp's names, see gguf.TensorNameMap)
_GGUF_LAYER_NAMES: dict[str, str] = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "ffn_gate.bias": "mlp.gate_proj.bias",
    "ffn_up.bias": "mlp.up_proj.bias",
    "ffn_down.bias": "mlp.down_proj.bias",
}
_GGUF_GLOBAL_NAMES: dict[str, str] = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")


def load_stage(
    path_or_name: str | Path,
    start: int = 0,
    end: int | None = None,
    dtype: torch.dtype = torch.float32,
    attention_backend: str = "auto",
    device: torch.device | str = "cpu",
) -> tuple[LlamaStage, ModelConfig]:
    """Build ``LlamaStage`` for layers ``[start, end)`` (``end=None``: to the last layer).

    ``attention_backend="auto"`` takes Triton on CUDA (when installed), torch elsewhere."""
    attention_backend = resolve_attention(attention_backend, torch.device(device).type)
    path = resolve_model_path(path_or_name)
    if path.is_dir():
        config = _read_hf_config(path)
        read: Callable[[LlamaStage], dict[str, torch.Tensor]] = functools.partial(_read_hf, path)
    else:
        config, read = _gguf_config_and_reader(path)
    end = config.num_layers if end is None else end
    # NOTE(engine): build on the meta device so no random init runs; load_weights assigns
    # the real tensors, and the RoPE tables are built on the CPU regardless.
    with torch.device("meta"):
        stage = LlamaStage(config, start, end, attention_backend, dtype)
    stage.load_weights(read(stage))
    stage = stage.to(device).eval()
    stage.pack_weights()  # fp32 on the CPU only (see linear.pack_weight)
    return stage, config


# ---------------------------------------------------------------------------------------------
# Hugging Face folders: config.json + model.safetensors or a sharded index.
# ---------------------------------------------------------------------------------------------


def _read_hf_config(folder: Path) -> ModelConfig:
    try:
        raw = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{folder / 'config.json'}: invalid JSON ({err})") from err
    return ModelConfig.from_hf_dict(raw)


def _weight_files(folder: Path) -> dict[str, Path]:
    """``{tensor name: safetensors file}`` from the shard index; empty for one file."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise ValueError(f"{index}: not a safetensors index ({err})") from err
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / "model.safetensors"
    if not single.is_file():
        raise ValueError(f"{folder}: no model.safetensors or model.safetensors.index.json")
    return {}


def _read_hf(folder: Path, stage: LlamaStage) -> dict[str, torch.Tensor]:
    wanted = stage.checkpoint_names()  # {param name: checkpoint name}
    index = _weight_files(folder)
    by_file: dict[Path, list[str]] = {}
    missing: list[str] = []
    for ckpt_name in sorted(set(wanted.values())):
        file = index.get(ckpt_name) if index else folder / "model.safetensors"
        if file is None:
            missing.append(ckpt_name)
        else:
            by_file.setdefault(file, []).append(ckpt_name)
    tensors: dict[str, torch.Tensor] = {}
    for file, names in by_file.items():
        tensors.update(_read_safetensors(file, names, missing))
    _raise_if_missing(folder, missing)
    return {param: tensors[ckpt] for param, ckpt in wanted.items()}


def _read_safetensors(file: Path, names: list[str], missing: list[str]) -> dict[str, torch.Tensor]:
    """Read ``names`` from one file; names the file lacks are appended to ``missing``."""
    out: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            present = set(handle.keys())
            for name in names:
                if name in present:
                    out[name] = handle.get_tensor(name)
                else:
                    missing.append(name)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ValueError(f"{file}: unreadable or corrupt safetensors file ({err})") from err
    return out


def _raise_if_missing(source: Path, missing: list[str]) -> None:
    if missing:
        shown = ", ".join(sorted(missing)[:5])
        raise ValueError(f"{source}: {len(missing)} tensors missing for this stage, e.g. {shown}")


# ---------------------------------------------------------------------------------------------
# GGUF (llama.cpp): metadata -> ModelConfig; blk.N.* -> model.layers.N.*; dequantize on read.
# ---------------------------------------------------------------------------------------------


def _gguf_config_and_reader(
    path: Path,
) -> tuple[ModelConfig, Callable[[LlamaStage], dict[str, torch.Tensor]]]:
    reader = open_gguf(str(path))
    tensors = {t.name: t for t in reader.tensors}
    meta = gguf_metadata(reader)
    arch = meta.get("general.architecture")
    if "rope_freqs.weight" in tensors:
        raise ValueError(f"{path}: per-dimension rope_freqs (Llama 3.1 GGUF) are not supported")
    embed = tensors.get("token_embd.weight")
    if embed is None:
        raise ValueError(f"{path}: GGUF has no token_embd.weight")
    meta.setdefault(f"{arch}.vocab_size", int(embed.shape[-1]))
    config = ModelConfig.from_gguf_metadata(meta, "output.weight" not in tensors)
    # GGUF has no bias flags either: the tensors of layer 0 tell.
    config = dataclasses.replace(
        config,
        attention_bias=config.attention_bias or "blk.0.attn_q.bias" in tensors,
        o_proj_bias="blk.0.attn_output.bias" in tensors,
        mlp_bias="blk.0.ffn_up.bias" in tensors,
    )
    hf_to_gguf = {hf: gguf for gguf, hf in _GGUF_GLOBAL_NAMES.items()}

    def read(stage: LlamaStage) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        missing: list[str] = []
        for param, ckpt in stage.checkpoint_names().items():
            gguf_name = _hf_to_gguf_name(ckpt, hf_to_gguf)
            tensor = tensors.get(gguf_name) if gguf_name else None
            if tensor is None:
                missing.append(gguf_name or ckpt)
                continue
            out[param] = _dequantize(tensor, gguf_name or "", config, arch == "llama")
        _raise_if_missing(path, missing)
        return out

    return config, read


def _hf_to_gguf_name(hf_name: str, globals_table: dict[str, str]) -> str | None:
    if hf_name in globals_table:
        return globals_table[hf_name]
    match = _HF_LAYER.fullmatch(hf_name)
    if match is None:
        return None
    layer, suffix = match.groups()
    for gguf_suffix, hf_suffix in _GGUF_LAYER_NAMES.items():
        if hf_suffix == suffix:
            return f"blk.{layer}.{gguf_suffix}"
    return None


def _dequantize(tensor: Any, name: str, config: ModelConfig, is_permuted: bool) -> torch.Tensor:
    from gguf.quants import dequantize

    try:
        array = dequantize(tensor.data, tensor.tensor_type)  # [out, in] or [n] float32
    except (ValueError, NotImplementedError) as err:
        raise ValueError(f"{name}: cannot dequantize {tensor.tensor_type.name} ({err})") from err
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not array.flags.writeable:  # F32 tensors are views into the read-only memory map
        array = array.copy()
    # NOTE(engine): llama.cpp's converter interleaves each Q/K head's rows for its RoPE kernel
    # (pairs (2i, 2i+1) instead of (i, i + D/2)); undo it for the rotate-half convention.
    if is_permuted and (".attn_q." in name or ".attn_k." in name):
        num_heads = config.num_heads if ".attn_q." in name else config.num_kv_heads
        array = _unpermute(array, num_heads, config.head_dim)
    return torch.from_numpy(array)


def _unpermute(
    w: np.ndarray,  # [num_heads * head_dim, in] or [num_heads * head_dim]
    num_heads: int,
    head_dim: int,
) -> np.ndarray:
    rest = w.shape[1:]
    grouped = w.reshape(num_heads, head_dim // 2, 2, *rest)  # [H, D/2, 2, ...]
    return grouped.swapaxes(1, 2).reshape(w.shape)  # [H, 2, D/2, ...] -> original shape


def read_model_config(path_or_name: str | Path) -> ModelConfig:
    """The model's shape without loading any weights (for coordinators and planners)."""
    path = resolve_model_path(path_or_name)
    if path.is_dir():
        return _read_hf_config(path)
    return _gguf_config_and_reader(path)[0]
