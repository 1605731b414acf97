"""Triton kernel bodies for ``triton_attention`` (the kernel layer; imports triton at the top).

NOTE(kernels): only ``triton_attention`` imports this module, and only inside functions, so
importing ``helix.kernels`` never loads triton. The kernels live apart because ``@triton.jit``
resolves ``tl`` through module globals, so they cannot be built inside a function.

Layout facts every kernel relies on (the wrapper checks them):
- the caches are contiguous ``[num_blocks, block_size, Hkv, D]``, so token slot ``s`` of kv head
  ``h`` starts at element ``(s * Hkv + h) * D``;
- q / key / value may be strided views, but their last dim is contiguous;
- block tables, query_start_loc and seq_lens are contiguous.

KV is walked in tiles of ``TILE_N`` token positions that may span several cache blocks: each
position looks up its own block id, so any ``block_size`` works with a dot-friendly tile.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def write_kv_kernel(
    key_ptr,  # [T, Hkv, D], strides (stride_key_t, stride_key_h, 1)
    value_ptr,  # [T, Hkv, D], strides (stride_value_t, stride_value_h, 1)
    k_cache_ptr,  # [num_blocks, block_size, Hkv, D], contiguous
    v_cache_ptr,  # [num_blocks, block_size, Hkv, D], contiguous
    slot_mapping_ptr,  # [T] int64, -1 = skip
    stride_key_t,
    stride_key_h,
    stride_value_t,
    stride_value_h,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_HD: tl.constexpr,  # next power of two >= NUM_KV_HEADS * HEAD_DIM
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token)  # scalar int64
    idx = tl.arange(0, BLOCK_HD)  # [BLOCK_HD] = flattened (head, dim)
    head, dim = idx // HEAD_DIM, idx % HEAD_DIM
    # NOTE(kernels): fold the scalar test into the bound; `block & scalar_bool` yields an int
    # mask under TRITON_INTERPRET=1 (triton 3.9), which tl.load rejects.
    mask = idx < tl.where(slot >= 0, NUM_KV_HEADS * HEAD_DIM, 0)
    dst = tl.maximum(slot, 0) * (NUM_KV_HEADS * HEAD_DIM) + idx  # [BLOCK_HD]
    k = tl.load(key_ptr + token * stride_key_t + head * stride_key_h + dim, mask=mask)
    v = tl.load(value_ptr + token * stride_value_t + head * stride_value_h + dim, mask=mask)
    tl.store(k_cache_ptr + dst, k, mask=mask)
    tl.store(v_cache_ptr + dst, v, mask=mask)


@triton.jit
def _kv_offsets(
    table_ptr,  # [M] this sequence's block table row
    pos,  # [TILE_N] context positions
    valid,  # [TILE_N] pos < seq_len
    kv_head,
    dims,  # [HEAD_DIM_PAD]
    BLOCK_SIZE: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):  # -> element offsets into either cache [TILE_N, HEAD_DIM_PAD], and their load mask
    block = tl.load(table_ptr + pos // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)  # [TILE_N]
    slot = block * BLOCK_SIZE + pos % BLOCK_SIZE  # [TILE_N]
    offs = (slot * NUM_KV_HEADS + kv_head) * HEAD_DIM  # [TILE_N]
    return offs[:, None] + dims[None, :], valid[:, None] & (dims < HEAD_DIM)[None, :]


@triton.jit
def decode_kernel(
    q_ptr,  # [B, H, D], strides (stride_q_b, stride_q_h, 1)
    k_cache_ptr,  # [num_blocks, block_size, Hkv, D]
    v_cache_ptr,  # [num_blocks, block_size, Hkv, D]
    block_tables_ptr,  # [B, M] int32
    seq_lens_ptr,  # [B] int32
    out_ptr,  # NUM_SPLITS == 1: [B, H, D] q dtype; else [B, H, NUM_SPLITS, D] fp32 partials
    lse_ptr,  # [B, H, NUM_SPLITS] fp32, log2-sum-exp2 of each split (unused if NUM_SPLITS == 1)
    scale,
    stride_q_b,
    stride_q_h,
    max_blocks_per_seq,
    tiles_per_split,
    NUM_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    GROUP: tl.constexpr,  # NUM_HEADS // NUM_KV_HEADS
    GROUP_PAD: tl.constexpr,  # power of two >= max(GROUP, 16), rows of the dot
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    TILE_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,  # feed tl.dot fp32 operands (the interpreter mis-multiplies bf16)
):
    # One program = one (sequence, kv head, split); the GROUP query heads sharing the kv head
    # are the rows of one dot, so each K/V tile is read once per group.
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    rows = tl.arange(0, GROUP_PAD)  # [GROUP_PAD]
    dims = tl.arange(0, HEAD_DIM_PAD)  # [HEAD_DIM_PAD]
    heads = kv_head * GROUP + rows  # [GROUP_PAD]
    row_mask = (rows < GROUP)[:, None] & (dims < HEAD_DIM)[None, :]
    q = tl.load(
        q_ptr + seq * stride_q_b + heads[:, None] * stride_q_h + dims[None, :],
        mask=row_mask,
        other=0.0,
    )  # [GROUP_PAD, HEAD_DIM_PAD]
    if DOT_FP32:
        q = q.to(tl.float32)
    table_ptr = block_tables_ptr + seq * max_blocks_per_seq
    qk_scale = scale * 1.4426950408889634  # log2(e) folded in, so exp2 below

    m = tl.full([GROUP_PAD], -1.0e30, tl.float32)  # running max (log2 domain)
    denom = tl.zeros([GROUP_PAD], tl.float32)  # running sum of exp2
    acc = tl.zeros([GROUP_PAD, HEAD_DIM_PAD], tl.float32)
    tile_lo = split * tiles_per_split
    tile_hi = tl.minimum(tl.cdiv(seq_len, TILE_N), tile_lo + tiles_per_split)
    for tile in range(tile_lo, tile_hi):
        pos = tile * TILE_N + tl.arange(0, TILE_N)  # [TILE_N]
        valid = pos < seq_len
        offs, kv_mask = _kv_offsets(
            table_ptr, pos, valid, kv_head, dims, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM
        )  # [TILE_N, HEAD_DIM_PAD] x 2
        k = tl.load(k_cache_ptr + offs, mask=kv_mask, other=0.0).to(q.dtype)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [GROUP_PAD, TILE_N]
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))  # [GROUP_PAD]
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])  # [GROUP_PAD, TILE_N]
        denom = denom * alpha + tl.sum(p, axis=1)
        v = tl.load(v_cache_ptr + offs, mask=kv_mask, other=0.0).to(q.dtype)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v, input_precision=DOT_PRECISION)
        m = m_new

    safe = tl.where(denom > 0, denom, 1.0)
    out = acc / safe[:, None]  # [GROUP_PAD, HEAD_DIM_PAD]
    if NUM_SPLITS == 1:
        offs = (seq * NUM_HEADS + heads[:, None]) * HEAD_DIM + dims[None, :]
        tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=row_mask)
    else:
        part = (seq * NUM_HEADS + heads) * NUM_SPLITS + split  # [GROUP_PAD]
        tl.store(out_ptr + part[:, None] * HEAD_DIM + dims[None, :], out, mask=row_mask)
        lse = tl.where(denom > 0, m + tl.log2(safe), float("-inf"))  # empty split -> -inf
        tl.store(lse_ptr + part, lse, mask=rows < GROUP)


@triton.jit
def combine_splits_kernel(
    partial_ptr,  # [B, H, NUM_SPLITS, D] fp32, each split already normalised
    lse_ptr,  # [B, H, NUM_SPLITS] fp32 (log2 domain)
    out_ptr,  # [B, H, D], q dtype
    NUM_SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # flattened (sequence, head)
    splits = tl.arange(0, SPLITS_PAD)  # [SPLITS_PAD]
    dims = tl.arange(0, HEAD_DIM_PAD)  # [HEAD_DIM_PAD]
    lse = tl.load(
        lse_ptr + row * NUM_SPLITS + splits, mask=splits < NUM_SPLITS, other=float("-inf")
    )  # [SPLITS_PAD]
    weight = tl.exp2(lse - tl.max(lse, axis=0))  # [SPLITS_PAD], split 0 is never empty
    mask = (splits < NUM_SPLITS)[:, None] & (dims < HEAD_DIM)[None, :]
    part = tl.load(
        partial_ptr + (row * NUM_SPLITS + splits[:, None]) * HEAD_DIM + dims[None, :],
        mask=mask,
        other=0.0,
    )  # [SPLITS_PAD, HEAD_DIM_PAD]
    out = tl.sum(part * weight[:, None], axis=0) / tl.sum(weight, axis=0)  # [HEAD_DIM_PAD]
    tl.store(
        out_ptr + row * HEAD_DIM + dims, out.to(out_ptr.dtype.element_ty), mask=dims < HEAD_DIM
    )


@triton.jit
def _find_sequence(query_start_loc_ptr, tile, num_seqs, BLOCK_Q: tl.constexpr):
    # Sequence b owns query tiles [first(b), first(b + 1)) with
    # first(b) = query_start_loc[b] // BLOCK_Q + b, an upper bound on the tiles it needs, so the
    # grid (T // BLOCK_Q + B tiles) is known without reading query lengths on the host.
    # Binary search for the last b with first(b) <= tile.
    lo = num_seqs * 0
    hi = num_seqs - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        first = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        lo = tl.where(first <= tile, mid, lo)
        hi = tl.where(first <= tile, hi, mid - 1)
    return lo


# NOTE(kernels): num_seqs must stay a runtime int: Triton turns an int argument equal to 1 into a
# constexpr, and _find_sequence's loop-carried lo/hi would then change type inside the loop.
@triton.jit(do_not_specialize=["num_seqs"])
def prefill_kernel(
    q_ptr,  # [T, H, D], strides (stride_q_t, stride_q_h, 1)
    k_cache_ptr,  # [num_blocks, block_size, Hkv, D]
    v_cache_ptr,  # [num_blocks, block_size, Hkv, D]
    block_tables_ptr,  # [B, M] int32
    query_start_loc_ptr,  # [B + 1] int32
    seq_lens_ptr,  # [B] int32
    out_ptr,  # [T, H, D], contiguous
    scale,
    stride_q_t,
    stride_q_h,
    num_seqs,
    max_blocks_per_seq,
    NUM_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    TILE_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,  # feed tl.dot fp32 operands (the interpreter mis-multiplies bf16)
):
    # One program = BLOCK_Q queries of one sequence x one query head.
    tile = tl.program_id(0)
    head = tl.program_id(1)
    kv_head = head // (NUM_HEADS // NUM_KV_HEADS)
    seq = _find_sequence(query_start_loc_ptr, tile, num_seqs, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + seq)
    prefix_len = seq_len - q_len  # cached tokens before this step's queries
    first_query = (tile - (q_start // BLOCK_Q + seq)) * BLOCK_Q  # index within the sequence

    rows = first_query + tl.arange(0, BLOCK_Q)  # [BLOCK_Q] query index within the sequence
    row_valid = rows < q_len
    query_pos = prefix_len + rows  # [BLOCK_Q] context positions
    dims = tl.arange(0, HEAD_DIM_PAD)  # [HEAD_DIM_PAD]
    tokens = (q_start + rows).to(tl.int64)  # [BLOCK_Q] packed token index
    io_mask = row_valid[:, None] & (dims < HEAD_DIM)[None, :]
    q = tl.load(
        q_ptr + tokens[:, None] * stride_q_t + head * stride_q_h + dims[None, :],
        mask=io_mask,
        other=0.0,
    )  # [BLOCK_Q, HEAD_DIM_PAD]
    if DOT_FP32:
        q = q.to(tl.float32)
    table_ptr = block_tables_ptr + seq.to(tl.int64) * max_blocks_per_seq
    qk_scale = scale * 1.4426950408889634

    m = tl.full([BLOCK_Q], -1.0e30, tl.float32)
    denom = tl.zeros([BLOCK_Q], tl.float32)
    acc = tl.zeros([BLOCK_Q, HEAD_DIM_PAD], tl.float32)
    # Causal: the last query of this tile sees positions < prefix_len + first_query + BLOCK_Q.
    kv_end = tl.minimum(seq_len, prefix_len + first_query + BLOCK_Q)
    kv_end = tl.where(first_query < q_len, kv_end, 0)  # spare tile of the upper-bound grid
    for kv_tile in range(0, tl.cdiv(kv_end, TILE_N)):
        pos = kv_tile * TILE_N + tl.arange(0, TILE_N)  # [TILE_N]
        valid = pos < seq_len
        offs, kv_mask = _kv_offsets(
            table_ptr, pos, valid, kv_head, dims, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM
        )  # [TILE_N, HEAD_DIM_PAD] x 2
        k = tl.load(k_cache_ptr + offs, mask=kv_mask, other=0.0).to(q.dtype)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_Q, TILE_N]
        visible = valid[None, :] & (pos[None, :] <= query_pos[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])  # [BLOCK_Q, TILE_N]
        denom = denom * alpha + tl.sum(p, axis=1)
        v = tl.load(v_cache_ptr + offs, mask=kv_mask, other=0.0).to(q.dtype)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v, input_precision=DOT_PRECISION)
        m = m_new

    out = acc / tl.where(denom > 0, denom, 1.0)[:, None]
    offs = (tokens[:, None] * NUM_HEADS + head) * HEAD_DIM + dims[None, :]
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=io_mask)
