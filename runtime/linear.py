"""``linear``: ``F.linear`` that multiplies bf16 weights in fp32 where the CPU lacks a bf16 GEMM,
and runs fp32 weights packed for oneDNN on the CPU (``pack_weight``).

Packed fp32 weights: a row-major ``[out, in]`` weight is what MKL's GEMM reads slowest at the
few rows of a decode step (a 32000 x 768 LM head: ~14 GB/s at one row on this machine's 2
cores, where a plain copy streams ~28 GB/s). oneDNN's blocked layout, reordered once at load
time (what torch.compile's CPU "freezing" does), read the same head at ~22 GB/s and was as fast
or faster from 1 to 256 rows on most of the model's shapes; the packed tensor replaces the
weight (same bytes). Sums are ordered differently, so results differ from ``F.linear`` in the
last bits (~1e-6 relative). ``HELIX_CPU_PACKED_WEIGHTS=0`` keeps plain weights.

Where oneDNN reports no bf16 support (CPUs without AVX512, such as AVX2-only ones), torch's bf16
matmul is slow: its time grows with the rows (~5x slower than fp32 at 32 rows on such a CPU),
while converting to fp32 costs about the same at any row count. Timed on one layer's shapes plus
the LM head of a 100M Llama (2 cores, AVX2): bf16 14.8 / 29.4 / 58.1 ms at 4 / 8 / 16 rows,
converted 36.7 / 38.2 / 35.5 ms; they cross near 10 rows. So from
``UPCAST_MIN_ROWS`` rows on, the weight is converted to fp32 one slab at a time into a reused
buffer (the slab stays in cache and no fresh pages are touched) and multiplied in fp32. Products of
bf16 values are exact in fp32 and both paths accumulate in fp32 and round the output to bf16
once, so only the order of summation differs.
"""

from __future__ import annotations

import functools
import os
import threading

import torch
import torch.nn.functional as F

UPCAST_MIN_ROWS = 10
"""Rows (tokens) from which bf16 weights are multiplied in fp32 on such CPUs."""
_SLAB = 1 << 22  # fp32 elements converted at a time: 16 MiB
_scratch = threading.local()


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN has a real bf16 GEMM on this CPU (it needs AVX512 or newer)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias`` for ``x`` [T, in] and ``weight`` [out, in], in ``x``'s dtype."""
    if weight.is_mkldnn:  # packed by pack_weight: fp32 on the CPU
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        return out
    if (
        x.dtype is not torch.bfloat16
        or x.shape[0] < UPCAST_MIN_ROWS
        or x.device.type != "cpu"
        or cpu_has_fast_bf16()
    ):
        return F.linear(x, weight, bias)
    return _upcast_linear(x, weight, bias)


def _upcast_linear(
    x: torch.Tensor,  # [T, in] bf16
    weight: torch.Tensor,  # [out, in] bf16
    bias: torch.Tensor | None,  # [out] bf16
) -> torch.Tensor:  # [T, out] bf16
    out_features, in_features = weight.shape
    rows = max(1, _SLAB // in_features)
    buffer = _buffer(min(rows, out_features) * in_features)
    x32 = x.float()
    parts = []
    for start in range(0, out_features, rows):
        slab = weight[start : start + rows]
        w32 = buffer[: slab.numel()].view(slab.shape).copy_(slab)
        b32 = None if bias is None else bias[start : start + rows].float()
        parts.append(F.linear(x32, w32, b32))  # [T, rows] fp32
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
    return out.to(torch.bfloat16)


def _buffer(numel: int) -> torch.Tensor:
    """This thread's fp32 scratch of at least ``numel`` elements (at most one slab)."""
    buffer: torch.Tensor | None = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.numel() < numel:
        buffer = torch.empty(numel, dtype=torch.float32)
        _scratch.buffer = buffer
    return buffer


def packing_enabled(weight: torch.Tensor) -> bool:
    """Whether ``pack_weight`` applies: fp32 on a CPU whose torch has oneDNN, not switched off."""
    return (
        weight.dtype is torch.float32
        and weight.device.type == "cpu"
        and not weight.is_mkldnn
        and os.environ.get("HELIX_CPU_PACKED_WEIGHTS", "1") != "0"
        and bool(torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]
    )


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` [out, in] fp32 reordered into oneDNN's blocked layout for ``linear`` (a new
    tensor of the same size), or ``weight`` itself where ``packing_enabled`` says no."""
    if not packing_enabled(weight):
        return weight
    try:
        packed: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
    except (RuntimeError, AttributeError):  # a torch build without the op
        return weight
    return packed
