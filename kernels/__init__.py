"""helix.kernels: paged-attention backends behind one registry.

    from helix.kernels import get_attention
    attn = get_attention("torch")          # or "triton", "pallas"
    attn.write_kv(k, v, k_cache, v_cache, slot_mapping)
    out = attn.decode(q, k_cache, v_cache, block_tables, seq_lens, scale)

Importing this package loads no torch, triton or jax; a backend's module is imported the
first time ``get_attention`` asks for it.
"""

from __future__ import annotations

import importlib
import importlib.util

from .backend import AttentionBackend

__all__ = ["ATTENTION_BACKENDS", "AttentionBackend", "get_attention", "resolve_attention"]

# name -> (module inside helix.kernels, class name)
_REGISTRY: dict[str, tuple[str, str]] = {
    "torch": ("torch_attention", "TorchAttention"),
    "triton": ("triton_attention", "TritonAttention"),
    "pallas": ("pallas_attention", "PallasAttention"),
}
ATTENTION_BACKENDS: tuple[str, ...] = tuple(_REGISTRY)


def get_attention(name: str) -> AttentionBackend:
    """Return a fresh backend instance for ``name`` (one of ``ATTENTION_BACKENDS``)."""
    if name not in _REGISTRY:
        choices = ", ".join(repr(n) for n in ATTENTION_BACKENDS)
        raise ValueError(f"unknown attention backend {name!r}; choose one of {choices}")
    module_name, class_name = _REGISTRY[name]
    module = importlib.import_module(f".{module_name}", __name__)
    backend: AttentionBackend = getattr(module, class_name)()
    return backend


def resolve_attention(name: str, device_type: str) -> str:
    """``auto`` -> the fast backend for ``device_type``: ``triton`` on CUDA when Triton is
    installed (its decode can be captured in a CUDA graph), else ``torch``. Other names pass."""
    if name != "auto":
        return name
    if device_type == "cuda" and importlib.util.find_spec("triton") is not None:
        return "triton"
    return "torch"
