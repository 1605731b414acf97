"""Paged attention in Triton: validating wrappers around the kernels in ``_triton_kernels``.

Layers: kernels (``_triton_kernels.py``), the ``triton_*`` functions here (check shapes, dtypes,
contiguity and device, pick tile sizes, launch), and ``TritonAttention`` for the registry. The
ground truth is ``torch_attention.reference_*``.

Runs on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` was set before triton was
first imported (tests do that in a subprocess; expect ~4 ms per loop step).
"""

from __future__ import annotations

import functools
import os

import torch

from .backend import AttentionBackend
from .validate import CacheDims, check_decode, check_prefill, check_write_kv

NUM_WARPS = 4


def is_interpret() -> bool:
    """True when Triton runs kernels with its numpy interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _require(name: str, ok: bool, problem: str) -> None:
    if not ok:
        raise ValueError(f"{name}: {problem}")


def _check_launch(**tensors: torch.Tensor) -> None:
    """Contiguity and device rules of the kernels (see ``_triton_kernels``)."""
    for name, x in tensors.items():
        if name in ("q", "key", "value"):
            _require(name, x.stride(-1) == 1, f"last dim must be contiguous, strides {x.stride()}")
        else:
            _require(name, x.is_contiguous(), f"must be contiguous, strides {x.stride()}")
    device = tensors["k_cache"].device
    _require(
        "k_cache",
        device.type == "cuda" or is_interpret(),
        f"on {device}; Triton needs CUDA tensors, or TRITON_INTERPRET=1 set before "
        "triton is imported to run on CPU",
    )


def _tile_sizes(dims: CacheDims, tile_n: int | None) -> tuple[int, int]:
    """(TILE_N, HEAD_DIM_PAD): tl.dot needs every dim >= 16 and a power of two."""
    tile_n = tile_n or (16 if is_interpret() else 64)
    _require("tile_n", tile_n >= 16 and tile_n == _next_pow2(tile_n), "power of two >= 16")
    return tile_n, max(16, _next_pow2(dims.head_dim))


def _dot_args(dtype: torch.dtype) -> dict[str, object]:
    """DOT_PRECISION and DOT_FP32 constexprs for the kernels."""
    # NOTE(kernels): tl.dot defaults to tf32 for fp32 inputs (~1e-3 error), so ask for ieee.
    # Under TRITON_INTERPRET=1 (triton 3.9) tl.dot multiplies bf16/fp16 operands as raw integer
    # bits, so the interpreter path upcasts them to fp32 before every dot.
    dot_fp32 = is_interpret() or dtype == torch.float32
    return {"DOT_PRECISION": "ieee" if dot_fp32 else "tf32", "DOT_FP32": dot_fp32}


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _default_num_splits(q: torch.Tensor, dims: CacheDims, max_tiles: int) -> int:
    """Split the KV walk when (sequence, kv head) programs alone cannot fill the GPU."""
    if not q.is_cuda:
        return 1
    programs = q.shape[0] * dims.num_kv_heads
    sms = _num_sms(q.device.index or 0)
    if programs >= sms:
        return 1
    min_tiles_per_split = 4
    return max(1, min(-(-2 * sms // programs), -(-max_tiles // min_tiles_per_split), 32))


def triton_write_kv(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D], mutated
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D], mutated
    slot_mapping: torch.Tensor,  # [T] int64, -1 = skip
) -> None:
    dims = check_write_kv(key, value, k_cache, v_cache, slot_mapping)
    _check_launch(key=key, value=value, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping)
    if key.shape[0] == 0:
        return
    from . import _triton_kernels as tk

    tk.write_kv_kernel[(key.shape[0],)](
        key,
        value,
        k_cache,
        v_cache,
        slot_mapping,
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        NUM_KV_HEADS=dims.num_kv_heads,
        HEAD_DIM=dims.head_dim,
        BLOCK_HD=_next_pow2(dims.num_kv_heads * dims.head_dim),
    )


def triton_decode(
    q: torch.Tensor,  # [B, H, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    block_tables: torch.Tensor,  # [B, M] int32
    seq_lens: torch.Tensor,  # [B] int32, each >= 1
    scale: float,
    *,
    num_splits: int | None = None,
    tile_n: int | None = None,
) -> torch.Tensor:  # [B, H, D]
    dims = check_decode(q, k_cache, v_cache, block_tables, seq_lens)
    _check_launch(
        q=q, k_cache=k_cache, v_cache=v_cache, block_tables=block_tables, seq_lens=seq_lens
    )
    tile_n, head_dim_pad = _tile_sizes(dims, tile_n)
    num_seqs, num_heads = q.shape[0], q.shape[1]
    out = torch.empty(num_seqs, num_heads, dims.head_dim, dtype=q.dtype, device=q.device)
    if num_seqs == 0:
        return out
    # Splits are sized from the block-table width, a bound known without a device sync.
    max_tiles = max(1, -(-block_tables.shape[1] * dims.block_size // tile_n))
    num_splits = num_splits or _default_num_splits(q, dims, max_tiles)
    _require("num_splits", num_splits >= 1, f"must be >= 1, got {num_splits}")
    tiles_per_split = -(-max_tiles // num_splits)
    num_splits = -(-max_tiles // tiles_per_split)  # drop splits that would always be empty
    group = num_heads // dims.num_kv_heads
    if num_splits == 1:
        partial, lse = out, out  # lse is unused when NUM_SPLITS == 1
    else:
        partial = torch.empty(
            num_seqs, num_heads, num_splits, dims.head_dim, dtype=torch.float32, device=q.device
        )  # [B, H, S, D]
        lse = torch.empty(
            num_seqs, num_heads, num_splits, dtype=torch.float32, device=q.device
        )  # [B, H, S]
    from . import _triton_kernels as tk

    tk.decode_kernel[(num_seqs, dims.num_kv_heads, num_splits)](
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        partial,
        lse,
        scale,
        q.stride(0),
        q.stride(1),
        block_tables.shape[1],
        tiles_per_split,
        NUM_HEADS=num_heads,
        NUM_KV_HEADS=dims.num_kv_heads,
        GROUP=group,
        GROUP_PAD=max(16, _next_pow2(group)),
        HEAD_DIM=dims.head_dim,
        HEAD_DIM_PAD=head_dim_pad,
        BLOCK_SIZE=dims.block_size,
        TILE_N=tile_n,
        NUM_SPLITS=num_splits,
        **_dot_args(q.dtype),
        num_warps=NUM_WARPS,
    )
    if num_splits > 1:
        tk.combine_splits_kernel[(num_seqs * num_heads,)](
            partial,
            lse,
            out,
            NUM_SPLITS=num_splits,
            SPLITS_PAD=_next_pow2(num_splits),
            HEAD_DIM=dims.head_dim,
            HEAD_DIM_PAD=head_dim_pad,
            num_warps=NUM_WARPS,
        )
    return out


def triton_prefill(
    q: torch.Tensor,  # [T, H, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    block_tables: torch.Tensor,  # [B, M] int32
    query_start_loc: torch.Tensor,  # [B + 1] int32
    seq_lens: torch.Tensor,  # [B] int32
    scale: float,
    *,
    block_q: int | None = None,
    tile_n: int | None = None,
) -> torch.Tensor:  # [T, H, D]
    dims = check_prefill(q, k_cache, v_cache, block_tables, query_start_loc, seq_lens)
    _check_launch(
        q=q,
        k_cache=k_cache,
        v_cache=v_cache,
        block_tables=block_tables,
        query_start_loc=query_start_loc,
        seq_lens=seq_lens,
    )
    tile_n, head_dim_pad = _tile_sizes(dims, tile_n)
    block_q = block_q or (16 if is_interpret() else 64)
    _require("block_q", block_q >= 16 and block_q == _next_pow2(block_q), "power of two >= 16")
    num_tokens, num_heads = q.shape[0], q.shape[1]
    num_seqs = seq_lens.shape[0]
    out = torch.empty(num_tokens, num_heads, dims.head_dim, dtype=q.dtype, device=q.device)
    if num_tokens == 0:
        return out
    from . import _triton_kernels as tk

    # Upper bound on query tiles, see _find_sequence; spare tiles exit without work.
    num_tiles = num_tokens // block_q + num_seqs
    tk.prefill_kernel[(num_tiles, num_heads)](
        q,
        k_cache,
        v_cache,
        block_tables,
        query_start_loc,
        seq_lens,
        out,
        scale,
        q.stride(0),
        q.stride(1),
        num_seqs,
        block_tables.shape[1],
        NUM_HEADS=num_heads,
        NUM_KV_HEADS=dims.num_kv_heads,
        HEAD_DIM=dims.head_dim,
        HEAD_DIM_PAD=head_dim_pad,
        BLOCK_SIZE=dims.block_size,
        BLOCK_Q=block_q,
        TILE_N=tile_n,
        **_dot_args(q.dtype),
        num_warps=NUM_WARPS,
    )
    return out


class TritonAttention(AttentionBackend):
    """Triton kernels; CUDA, or CPU under ``TRITON_INTERPRET=1``."""

    name = "triton"
    cuda_graph_safe = True  # launch parameters come from shapes only

    def write_kv(self, key, value, k_cache, v_cache, slot_mapping) -> None:
        triton_write_kv(key, value, k_cache, v_cache, slot_mapping)

    def prefill(self, q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale):
        return triton_prefill(q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale)

    def decode(self, q, k_cache, v_cache, block_tables, seq_lens, scale):
        return triton_decode(q, k_cache, v_cache, block_tables, seq_lens, scale)
