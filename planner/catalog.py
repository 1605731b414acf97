"""Built-in GPU kinds and model shapes, and reading a model shape from a Hugging Face
config.json."""

from __future__ import annotations

import json
from pathlib import Path

from .spec import GpuSpec, ModelSpec, SpecError

# Datasheet figures: memory (GB), dense bf16/fp16 tensor TFLOP/s, memory bandwidth (GB/s).
GPU_CATALOG: dict[str, GpuSpec] = {
    spec.name: spec
    for spec in (
        GpuSpec("A100-40GB", memory_gb=40, bf16_tflops=312, hbm_gbps=1555),
        GpuSpec("A100-80GB", memory_gb=80, bf16_tflops=312, hbm_gbps=2039),
        GpuSpec("H100", memory_gb=80, bf16_tflops=989, hbm_gbps=3350),
        GpuSpec("H200", memory_gb=141, bf16_tflops=989, hbm_gbps=4800),
        GpuSpec("L4", memory_gb=24, bf16_tflops=121, hbm_gbps=300),
        GpuSpec("T4", memory_gb=16, bf16_tflops=65, hbm_gbps=320),
        GpuSpec("V100", memory_gb=32, bf16_tflops=125, hbm_gbps=900),
        GpuSpec("A10G", memory_gb=24, bf16_tflops=70, hbm_gbps=600),
        GpuSpec("L40S", memory_gb=48, bf16_tflops=362, hbm_gbps=864),
        GpuSpec("RTX-4090", memory_gb=24, bf16_tflops=165, hbm_gbps=1008),
    )
}

# Short names people write; `gpus:` entries may override their fields.
GPU_ALIASES: dict[str, str] = {"A100": "A100-40GB", "RTX4090": "RTX-4090", "4090": "RTX-4090"}

MODEL_CATALOG: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "llama-2-70b",
            num_layers=80,
            hidden_size=8192,
            num_heads=64,
            num_kv_heads=8,
            intermediate_size=28672,
            vocab_size=32000,
        ),
        ModelSpec(
            "llama-30b",
            num_layers=60,
            hidden_size=6656,
            num_heads=52,
            num_kv_heads=52,
            intermediate_size=17920,
            vocab_size=32000,
        ),
        ModelSpec(
            "llama-3-8b",
            num_layers=32,
            hidden_size=4096,
            num_heads=32,
            num_kv_heads=8,
            intermediate_size=14336,
            vocab_size=128256,
        ),
        ModelSpec(
            "llama-3-70b",
            num_layers=80,
            hidden_size=8192,
            num_heads=64,
            num_kv_heads=8,
            intermediate_size=28672,
            vocab_size=128256,
        ),
        ModelSpec(
            "qwen2.5-7b",
            num_layers=28,
            hidden_size=3584,
            num_heads=28,
            num_kv_heads=4,
            intermediate_size=18944,
            vocab_size=152064,
        ),
        ModelSpec(
            "smollm2-135m",
            num_layers=30,
            hidden_size=576,
            num_heads=9,
            num_kv_heads=3,
            intermediate_size=1536,
            vocab_size=49152,
            tie_word_embeddings=True,
        ),
    )
}


def resolve_gpu(name: str) -> GpuSpec | None:
    """The catalog entry for a kind name or alias (case-insensitive), or None."""
    canonical = {key.lower(): key for key in GPU_CATALOG}
    alias = {key.lower(): value for key, value in GPU_ALIASES.items()}
    key = name.lower()
    if key in canonical:
        return GPU_CATALOG[canonical[key]]
    if key in alias:
        return GPU_CATALOG[alias[key]]
    return None


def model_from_hf_config(path: Path, field_path: str = "model") -> ModelSpec:
    """Read a ModelSpec from a config.json file or a checkpoint folder holding one."""
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise SpecError(field_path, f"no config.json at {path}")
    try:
        cfg = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SpecError(field_path, f"cannot read {config_file}: {exc}") from None
    if not isinstance(cfg, dict):
        raise SpecError(field_path, f"{config_file} is not a JSON object")
    try:
        heads = int(cfg["num_attention_heads"])
        return ModelSpec(
            name=str(cfg.get("_name_or_path") or path.name or "custom"),
            num_layers=int(cfg["num_hidden_layers"]),
            hidden_size=int(cfg["hidden_size"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            intermediate_size=int(cfg["intermediate_size"]),
            vocab_size=int(cfg["vocab_size"]),
            head_dim=int(cfg.get("head_dim") or 0),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        )
    except KeyError as exc:
        raise SpecError(field_path, f"{config_file} lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise SpecError(field_path, f"{config_file}: {exc}") from None


def resolve_model(value: str, base_dir: Path | None = None, field_path: str = "model") -> ModelSpec:
    """A built-in model name, or a path to a config.json / checkpoint folder."""
    if value.lower() in MODEL_CATALOG:
        return MODEL_CATALOG[value.lower()]
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None and (base_dir / path).exists():
        path = base_dir / path
    if path.exists():
        return model_from_hf_config(path, field_path)
    raise SpecError(
        field_path,
        f"unknown model {value!r}: not a built-in name "
        f"({', '.join(sorted(MODEL_CATALOG))}) and no such path",
    )
