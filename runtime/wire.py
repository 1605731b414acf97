"""torch <-> wire tensors (the only place the runtime's messages meet torch)."""

from __future__ import annotations

import torch

from .messages import Tensor

_TORCH = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "int64": torch.int64,
    "int32": torch.int32,
}
_NAMES = {v: k for k, v in _TORCH.items()}


def to_wire(t: torch.Tensor) -> Tensor:
    t = t.detach().contiguous().cpu()
    if t.dtype not in _NAMES:
        raise ValueError(f"dtype {t.dtype} cannot travel on the wire")
    raw = t.view(torch.uint8) if t.numel() else t
    return Tensor(_NAMES[t.dtype], tuple(t.shape), raw.numpy().tobytes() if t.numel() else b"")


def from_wire(w: Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    dtype = _TORCH[w.dtype]
    flat = (
        torch.frombuffer(bytearray(w.data), dtype=torch.uint8)
        if len(w.data)
        else (torch.empty(0, dtype=torch.uint8))
    )
    return flat.view(dtype).reshape(w.shape).to(device)
