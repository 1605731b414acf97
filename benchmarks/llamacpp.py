"""llama.cpp (through llama-cpp-python, when installed) on the engine benchmark's own weights.

`export_gguf` writes the benchmark's random HF Llama as a GGUF in the run's precision (F32 or
BF16; norms stay F32 as llama.cpp's converter keeps them), with the Q/K rows interleaved the way
llama.cpp's RoPE expects and a placeholder vocabulary (prompts are token ids, never text).
`llamacpp_decode` runs greedy batched decoding with the low-level API: every prompt is its own
sequence of one `llama_decode` batch, then one token per sequence per step, the KV cache in the
run's precision too.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

_LAYER = {  # HF per-layer suffix -> GGUF per-layer suffix
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def _interleave_rope_rows(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """HF pairs rows (i, i + D/2) of each head for RoPE; llama.cpp's llama arch pairs (2i, 2i+1)."""
    head_dim = w.shape[0] // num_heads
    return w.reshape(num_heads, 2, head_dim // 2, -1).transpose(1, 2).reshape(w.shape)


def _gguf_name(hf_name: str) -> str:
    if hf_name in _GLOBAL:
        return _GLOBAL[hf_name]
    _, _, layer, suffix = hf_name.split(".", 3)  # model.layers.{i}.{suffix}
    return f"blk.{layer}.{_LAYER[suffix]}"


def export_gguf(folder: Path, dtype: str) -> Path:
    """``folder``'s safetensors Llama as ``folder/model-{dtype}.gguf`` (float32 or bfloat16).

    Only what ``build_model`` in engine.py makes: the plain Llama architecture, one file.
    """
    import gguf
    from safetensors.torch import load_file

    path = folder / f"model-{dtype}.gguf"
    if path.exists():
        return path
    config = json.loads((folder / "config.json").read_text())
    if config.get("rope_scaling") or config.get("attention_bias") or config["vocab_size"] < 259:
        raise ValueError("export_gguf: plain Llama only (no RoPE scaling or biases, vocab >= 259)")
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config["hidden_size"] // heads)
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    bf16 = dtype == "bfloat16"
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_BF16 if bf16 else gguf.LlamaFileType.ALL_F32)
    _add_placeholder_vocab(writer, config)
    for name, tensor in load_file(folder / "model.safetensors").items():
        if name.endswith("q_proj.weight"):
            tensor = _interleave_rope_rows(tensor, heads)
        elif name.endswith("k_proj.weight"):
            tensor = _interleave_rope_rows(tensor, kv_heads)
        if bf16 and tensor.dim() == 2:
            bits = tensor.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
            writer.add_tensor(_gguf_name(name), bits, raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            writer.add_tensor(_gguf_name(name), tensor.float().contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_placeholder_vocab(writer: Any, config: dict[str, Any]) -> None:
    """A sentencepiece-style vocabulary llama.cpp accepts: byte tokens, then w{i} words."""
    import gguf

    size = config["vocab_size"]
    tokens, types = [], []
    for i in range(size):
        if 3 <= i < 3 + 256:
            tokens.append(f"<0x{i - 3:02X}>")
            types.append(gguf.TokenType.BYTE)
        else:
            tokens.append(f"w{i}")
            types.append(gguf.TokenType.CONTROL if i < 3 else gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * size)
    writer.add_token_types(types)
    writer.add_bos_token_id(config.get("bos_token_id", 1))
    writer.add_eos_token_id(config.get("eos_token_id", 2))


_LOG_CALLBACK: list[Any] = []


def _silent(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    return None


class LlamaCpp:
    """One llama.cpp model and context sized for ``max_batch`` sequences of ``max_len`` tokens."""

    def __init__(self, gguf_path: Path, dtype: str, max_batch: int, max_len: int) -> None:
        import gguf
        import llama_cpp as lc

        self.lc = lc
        _LOG_CALLBACK.append(lc.llama_log_callback(_silent))  # kept alive while llama.cpp runs
        lc.llama_log_set(_LOG_CALLBACK[-1], ctypes.c_void_p(0))
        lc.llama_backend_init()
        self.model = lc.llama_model_load_from_file(
            str(gguf_path).encode(), lc.llama_model_default_params()
        )
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf_path}")
        params = lc.llama_context_default_params()
        params.n_ctx = max_batch * max_len
        params.n_batch = params.n_ubatch = max(512, max_batch * 16)
        params.n_seq_max = max_batch
        params.n_threads = params.n_threads_batch = torch.get_num_threads()
        # The bindings lack GGML_TYPE_BF16; gguf's enum mirrors ggml's type ids.
        kv_type = int(gguf.GGMLQuantizationType.BF16) if dtype == "bfloat16" else lc.GGML_TYPE_F32
        params.type_k = params.type_v = kv_type
        self.ctx = lc.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.batch = lc.llama_batch_init(params.n_batch, 0, max_batch)

    def close(self) -> None:
        self.lc.llama_batch_free(self.batch)
        self.lc.llama_free(self.ctx)
        self.lc.llama_model_free(self.model)

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """entries: (token, position, sequence, wants logits)."""
        batch = self.batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
        batch.n_tokens = len(entries)
        if self.lc.llama_decode(self.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def _argmax(self, row: int) -> int:
        logits = self.lc.llama_get_logits_ith(self.ctx, row)
        return int(np.ctypeslib.as_array(logits, shape=(self.vocab,)).argmax())

    def generate(self, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
        """Greedy: ``new_tokens`` ids per prompt, all prompts decoded together."""
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        entries = [
            (t, pos, seq, pos == len(p) - 1)
            for seq, p in enumerate(prompts)
            for pos, t in enumerate(p)
        ]
        self._decode(entries)
        rows = [i for i, entry in enumerate(entries) if entry[3]]
        out = [[self._argmax(row)] for row in rows]
        for step in range(1, new_tokens):
            self._decode(
                [
                    (o[-1], len(p) + step - 1, seq, True)
                    for seq, (p, o) in enumerate(zip(prompts, out))
                ]
            )
            for seq, o in enumerate(out):
                o.append(self._argmax(seq))
        return out


def llamacpp_decode(runner: LlamaCpp, prompts: list[list[int]], new_tokens: int) -> float:
    runner.generate(prompts[:1], 4)  # warm up
    start = time.perf_counter()
    runner.generate(prompts, new_tokens)
    return len(prompts) * new_tokens / (time.perf_counter() - start)
