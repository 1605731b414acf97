"""``linear``: ``F.linear`` with faster CPU paths: fp32 projections through a native kernel or
oneDNN-packed weights, bf16 weights multiplied in fp32 where the CPU lacks a bf16 GEMM.

CPU projections go one of three ways (``HELIX_CPU_LINEAR``, read once):

- ``native`` (what ``auto`` picks where it is built and the CPU has AVX2 and FMA): up to
  ``NATIVE_MAX_ROWS`` rows of fp32 (and of bf16 where the CPU has no bf16 GEMM) run
  ``helix.kernels._cpu_ops.linear``, a C kernel that streams each row-major weight row once,
  on torch's own OpenMP threads; more rows run ``F.linear`` (MKL), which is as fast there.
  Decode steps are matrix-vector products bound by streaming the weights: the 49 fp32
  projections of a 100M Llama at one row ran at 96-119 % of what ``torch.mv`` streams on this
  machine (2 cores), against 59-96 % for oneDNN's packed weights (below), and the kernel was
  faster than oneDNN up to 64 rows and within 7 % of it at 128-512.
- ``onednn`` (``auto`` without the kernel): weights reordered once at load time into oneDNN's
  blocked layout (what torch.compile's CPU "freezing" does); a row-major ``[out, in]`` weight is
  what MKL's GEMM reads slowest at the few rows of a decode step (a 32000 x 768 LM head: ~14
  GB/s at one row where a plain copy streams ~28 GB/s), the packed one ~22 GB/s.
- ``torch``: plain ``F.linear``.

Sums are ordered differently in each, so results differ in the last bits (~1e-6 relative).

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

from helix.kernels.cpu_native import native_ops

UPCAST_MIN_ROWS = 10
"""Rows (tokens) from which bf16 weights are multiplied in fp32 on such CPUs."""
NATIVE_MAX_ROWS = 256
"""Rows up to which fp32 projections run the native kernel (``F.linear`` above)."""
CPU_LINEAR_MODES = ("auto", "native", "onednn", "torch")
_SLAB = 1 << 22  # fp32 elements converted at a time: 16 MiB
_scratch = threading.local()


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN has a real bf16 GEMM on this CPU (it needs AVX512 or newer)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def cpu_linear_mode() -> str:
    """``HELIX_CPU_LINEAR`` resolved: ``native``, ``onednn`` or ``torch`` (see the module doc)."""
    mode = os.environ.get("HELIX_CPU_LINEAR", "auto").strip().lower() or "auto"
    if mode not in CPU_LINEAR_MODES:
        raise ValueError(f"HELIX_CPU_LINEAR: {mode!r} is not one of {', '.join(CPU_LINEAR_MODES)}")
    if mode in ("auto", "native") and native_ops() is not None:
        return "native"
    if mode == "native":
        raise ValueError(
            "HELIX_CPU_LINEAR=native: the compiled kernels helix.kernels._cpu_ops are not built, "
            "this CPU lacks AVX2/FMA or HELIX_CPU_NATIVE=0 (reinstall with a C compiler, or use "
            "auto)"
        )
    if mode != "torch" and bool(torch.backends.mkldnn.is_available()):  # type: ignore[no-untyped-call]
        return "onednn"
    return "torch"


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias`` for ``x`` [T, in] and ``weight`` [out, in], in ``x``'s dtype."""
    if weight.is_mkldnn:  # packed by pack_weight: fp32 on the CPU
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        return out
    if (
        x.device.type == "cpu"
        and x.dim() == 2
        and 0 < x.shape[0] <= NATIVE_MAX_ROWS
        and cpu_linear_mode() == "native"
        and _native_fits(x, weight, bias)
    ):
        return _native_linear(x, weight, bias)
    if (
        x.dtype is not torch.bfloat16
        or x.shape[0] < UPCAST_MIN_ROWS
        or x.device.type != "cpu"
        or cpu_has_fast_bf16()
    ):
        return F.linear(x, weight, bias)
    return _upcast_linear(x, weight, bias)


def _native_fits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """fp32, or bf16 where the CPU has no bf16 GEMM of its own; a weight with unit stride."""
    dtype = x.dtype
    return (
        (dtype is torch.float32 or (dtype is torch.bfloat16 and not cpu_has_fast_bf16()))
        and weight.dtype is dtype
        and weight.device.type == "cpu"
        and weight.dim() == 2
        and weight.stride(1) == 1
        and (bias is None or bias.dtype is dtype)
    )


def _native_linear(
    x: torch.Tensor,  # [T, in] fp32 or bf16
    weight: torch.Tensor,  # [out, in] x's dtype, unit stride along in
    bias: torch.Tensor | None,  # [out] x's dtype
) -> torch.Tensor:  # [T, out] x's dtype
    """The kernel multiplies and sums in fp32; bf16 outputs are rounded once at the end."""
    bf16 = x.dtype is torch.bfloat16
    if bf16 or not x.is_contiguous():
        x = x.float().contiguous()  # fp32 activations: [T, in] is small next to the weight
    if bias is not None:
        bias = bias.float().contiguous()
    rows, (out_features, in_features) = x.shape[0], weight.shape
    if x.shape[1] != in_features:
        raise ValueError(f"linear: input has {x.shape[1]} features, weight expects {in_features}")
    y = torch.empty(rows, out_features, dtype=torch.float32)
    native_ops().linear(
        x.data_ptr(),
        weight.data_ptr(),
        0 if bias is None else bias.data_ptr(),
        y.data_ptr(),
        rows,
        in_features,
        out_features,
        in_features,
        weight.stride(0),
        out_features,
        torch.get_num_threads(),
        bf16,
    )
    return y.to(torch.bfloat16) if bf16 else y


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
    """Whether ``pack_weight`` packs: fp32 on the CPU, in the ``onednn`` mode."""
    return (
        weight.dtype is torch.float32
        and weight.device.type == "cpu"
        and not weight.is_mkldnn
        and cpu_linear_mode() == "onednn"
    )


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` [out, in] fp32 reordered into oneDNN's blocked layout for ``linear`` (a new
    tensor of the same size), or ``weight`` itself where ``packing_enabled`` says no (the
    native kernel reads plain row-major weights)."""
    if not packing_enabled(weight):
        return weight
    try:
        packed: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
    except (RuntimeError, AttributeError):  # a torch build without the op
        return weight
    return packed
