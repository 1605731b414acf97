"""Paged attention in plain torch: the CPU fast path, plus a pure-loop ground truth.

Three layers, as in every kernel module:
- ``reference_*``: tiny Python loops in float64, obviously correct, used only by tests;
- ``torch_*``: the vectorised path (gather the blocks, then ``scaled_dot_product_attention``
  with fp32 accumulation);
- ``TorchAttention``: the validating ``AttentionBackend``; on a CPU, decode goes through the
  compiled kernel (``native_decode``) where it is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .backend import AttentionBackend
from .cpu_native import native_ops
from .validate import CacheDims, check_decode, check_prefill, check_values, check_write_kv

# ---------------------------------------------------------------------------------------------
# Ground truth: loops, float64, no SDPA.
# ---------------------------------------------------------------------------------------------


def reference_write_kv(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D], mutated
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D], mutated
    slot_mapping: torch.Tensor,  # [T] int64
) -> None:
    block_size = k_cache.shape[1]
    for t, slot in enumerate(slot_mapping.tolist()):
        if slot < 0:
            continue
        k_cache[slot // block_size, slot % block_size] = key[t]
        v_cache[slot // block_size, slot % block_size] = value[t]


def reference_prefill(
    q: torch.Tensor,  # [T, H, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    block_tables: torch.Tensor,  # [B, M]
    query_start_loc: torch.Tensor,  # [B + 1]
    seq_lens: torch.Tensor,  # [B]
    scale: float,
) -> torch.Tensor:  # [T, H, D]
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = q.shape[1] // num_kv_heads
    out = torch.zeros_like(q)
    starts = query_start_loc.tolist()
    for b, seq_len in enumerate(seq_lens.tolist()):
        table = block_tables[b].tolist()
        slots = [(table[j // block_size], j % block_size) for j in range(seq_len)]
        if not slots:
            continue
        keys = torch.stack([k_cache[blk, off] for blk, off in slots]).double()  # [L, Hkv, D]
        values = torch.stack([v_cache[blk, off] for blk, off in slots]).double()  # [L, Hkv, D]
        q_len = starts[b + 1] - starts[b]
        for i in range(q_len):
            pos = seq_len - q_len + i  # context position of this query
            for h in range(q.shape[1]):
                k = keys[: pos + 1, h // group]  # [pos + 1, D]
                v = values[: pos + 1, h // group]  # [pos + 1, D]
                probs = torch.softmax(k @ q[starts[b] + i, h].double() * scale, dim=0)
                out[starts[b] + i, h] = (probs @ v).to(q.dtype)
    return out


def reference_decode(
    q: torch.Tensor,  # [B, H, D]
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, M]
    seq_lens: torch.Tensor,  # [B]
    scale: float,
) -> torch.Tensor:  # [B, H, D]
    one_query_each = torch.arange(q.shape[0] + 1, dtype=torch.int32)
    return reference_prefill(q, k_cache, v_cache, block_tables, one_query_each, seq_lens, scale)


# ---------------------------------------------------------------------------------------------
# Vectorised torch.
# ---------------------------------------------------------------------------------------------


def torch_write_kv(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D], mutated
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D], mutated
    slot_mapping: torch.Tensor,  # [T] int64
    all_kept: bool | None = None,  # every slot >= 0, when the caller already knows
) -> None:
    block_size = k_cache.shape[1]
    if all_kept is None:
        all_kept = bool((slot_mapping >= 0).all())
    if all_kept:
        slots, key, value = slot_mapping, key, value
    else:
        keep = slot_mapping >= 0  # [T]
        slots, key, value = slot_mapping[keep], key[keep], value[keep]  # [T'] (T' <= T)
    if k_cache.is_contiguous() and v_cache.is_contiguous():
        # NOTE(kernels): index_copy_ on the flat [slots, Hkv, D] view; advanced-index assignment
        # with (block, offset) pairs is ~700x slower on CPU for a large cache.
        flat = (-1, *k_cache.shape[2:])
        k_cache.view(flat).index_copy_(0, slots, key.to(k_cache.dtype))
        v_cache.view(flat).index_copy_(0, slots, value.to(v_cache.dtype))
        return
    blocks, offsets = slots // block_size, slots % block_size  # any cache strides work here
    k_cache[blocks, offsets] = key
    v_cache[blocks, offsets] = value


def _gather_context(
    cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    table: torch.Tensor,  # [M]
    seq_len: int,
) -> torch.Tensor:  # [Hkv, seq_len, D], float32
    block_size = cache.shape[1]
    num_used = -(-seq_len // block_size)
    blocks = cache.index_select(0, table[:num_used].long())  # [num_used, block_size, Hkv, D]
    tokens = blocks.flatten(0, 1)[:seq_len]  # [seq_len, Hkv, D]
    return tokens.transpose(0, 1).float()


def torch_prefill(
    q: torch.Tensor,  # [T, H, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    block_tables: torch.Tensor,  # [B, M]
    query_start_loc: list[int],  # [B + 1], on the host
    seq_lens: list[int],  # [B], on the host
    scale: float,
) -> torch.Tensor:  # [T, H, D]
    out = torch.zeros_like(q)
    # NOTE(kernels): one SDPA per sequence; padding a batch to its longest prompt would waste
    # quadratic work when one long prompt shares a step with many short chunks.
    for b, seq_len in enumerate(seq_lens):
        start, end = query_start_loc[b], query_start_loc[b + 1]
        q_len = end - start
        if q_len == 0:
            continue
        k = _gather_context(k_cache, block_tables[b], seq_len)[None]  # [1, Hkv, L, D]
        v = _gather_context(v_cache, block_tables[b], seq_len)[None]  # [1, Hkv, L, D]
        qb = q[start:end].transpose(0, 1).float()[None]  # [1, H, q_len, D]
        mask = None
        if q_len != seq_len:
            # Bottom-right causal: query i sits at position seq_len - q_len + i.
            key_pos = torch.arange(seq_len, device=q.device)  # [L]
            query_pos = torch.arange(seq_len - q_len, seq_len, device=q.device)  # [q_len]
            mask = key_pos[None, :] <= query_pos[:, None]  # [q_len, L]
        ob = F.scaled_dot_product_attention(
            qb, k, v, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=True
        )  # [1, H, q_len, D]
        out[start:end] = ob[0].transpose(0, 1).to(q.dtype)
    return out


@dataclass(frozen=True)
class DecodePlan:
    """What a decode step's attention needs from its metadata, built once and shared by layers."""

    blocks: torch.Tensor  # [B * n] int64, the first n blocks of each table, clamped in range
    bias: torch.Tensor  # [B, 1, 1, n * block_size] fp32: 0 for keys < seq_len, else -inf


def decode_plan(
    block_tables: torch.Tensor,  # [B, M]
    seq_lens: torch.Tensor,  # [B]
    max_seq_len: int,
    num_blocks: int,
    block_size: int,
) -> DecodePlan:
    num_used = -(-max_seq_len // block_size)
    # Entries past a sequence's last block may be garbage: clamp them, the bias hides them.
    table = block_tables[:, :num_used].long().clamp(0, num_blocks - 1)  # [B, n]
    key_pos = torch.arange(num_used * block_size, device=seq_lens.device)  # [S]
    visible = key_pos[None, :] < seq_lens[:, None]  # [B, S]
    bias = torch.zeros(visible.shape, dtype=torch.float32, device=seq_lens.device)
    bias.masked_fill_(~visible, float("-inf"))
    return DecodePlan(table.flatten(), bias[:, None, None, :])


def decode_with_plan(
    q: torch.Tensor,  # [B, H, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    plan: DecodePlan,
    scale: float,
) -> torch.Tensor:  # [B, H, D]
    batch = q.shape[0]
    gathered = (batch, plan.bias.shape[-1], *k_cache.shape[2:])  # [B, n * block_size, Hkv, D]
    k = k_cache.index_select(0, plan.blocks).view(gathered).transpose(1, 2).float()
    v = v_cache.index_select(0, plan.blocks).view(gathered).transpose(1, 2).float()
    out = F.scaled_dot_product_attention(
        q[:, :, None, :].float(), k, v, attn_mask=plan.bias, scale=scale, enable_gqa=True
    )  # [B, H, 1, D]
    return out[:, :, 0].to(q.dtype)


def torch_decode(
    q: torch.Tensor,  # [B, H, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    block_tables: torch.Tensor,  # [B, M]
    seq_lens: torch.Tensor,  # [B]
    scale: float,
    max_seq_len: int,
) -> torch.Tensor:  # [B, H, D]
    num_blocks, block_size = k_cache.shape[:2]
    plan = decode_plan(block_tables, seq_lens, max_seq_len, num_blocks, block_size)
    return decode_with_plan(q, k_cache, v_cache, plan, scale)


def native_decode(
    q: torch.Tensor,  # [B, H, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    block_tables: torch.Tensor,  # [B, M]
    seq_lens: torch.Tensor,  # [B]
    scale: float,
) -> torch.Tensor | None:  # [B, H, D], or None where the compiled kernel does not apply
    """Decode attention by the compiled CPU kernel (``_cpu_ops.c``), reading the paged cache in
    place: no gather of the context, no mask, no SDPA (whose OpenMP fork/join per layer is most
    of a small step's attention time). fp32 or bf16 caches, head_dim a multiple of 8; the
    caller has validated the tables against the cache."""
    ops = native_ops()
    dtype = k_cache.dtype
    if (
        ops is None
        or q.device.type != "cpu"
        or dtype not in (torch.float32, torch.bfloat16)
        or v_cache.dtype is not dtype
        or q.shape[-1] % 8
        or not (k_cache.is_contiguous() and v_cache.is_contiguous())
    ):
        return None
    batch, heads, dim = q.shape
    q32 = q.to(torch.float32).contiguous()
    tables = block_tables.to(torch.int32).contiguous()
    lens = seq_lens.to(torch.int32).contiguous()
    out = torch.empty(batch, heads, dim, dtype=torch.float32)
    ops.decode_attention(
        q32.data_ptr(),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        tables.data_ptr(),
        lens.data_ptr(),
        out.data_ptr(),
        batch,
        heads,
        k_cache.shape[2],
        dim,
        k_cache.shape[1],
        tables.shape[1],
        scale,
        torch.get_num_threads(),
        dtype is torch.bfloat16,
    )
    return out.to(q.dtype)


def _same(kept: torch.Tensor, given: torch.Tensor) -> bool:
    return kept.device == given.device and torch.equal(kept, given)


class TorchAttention(AttentionBackend):
    """Vectorised torch; runs on any device torch supports.

    Every layer of a step passes the same metadata, so decode keeps copies of the last
    validated tables and lengths (with the SDPA path's ``DecodePlan`` once built; write_kv
    keeps whether every slot is kept) and reuses them while they are equal: a compare of a few
    hundred ints instead of a host sync, value checks and the mask per layer.
    """

    name = "torch"

    def __init__(self) -> None:
        self._memo: _DecodeMemo | None = None
        self._slots: tuple[torch.Tensor, bool] | None = None  # slot_mapping copy, all >= 0

    def write_kv(self, key, value, k_cache, v_cache, slot_mapping) -> None:
        check_write_kv(key, value, k_cache, v_cache, slot_mapping)
        memo = self._slots
        if memo is None or not _same(memo[0], slot_mapping):
            memo = self._slots = (slot_mapping.clone(), bool((slot_mapping >= 0).all()))
        torch_write_kv(key, value, k_cache, v_cache, slot_mapping, memo[1])

    def prefill(self, q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale):
        dims = check_prefill(q, k_cache, v_cache, block_tables, query_start_loc, seq_lens)
        starts, lens = query_start_loc.tolist(), seq_lens.tolist()
        check_values(q.shape[0], block_tables, starts, lens, dims)
        return torch_prefill(q, k_cache, v_cache, block_tables, starts, lens, scale)

    def decode(self, q, k_cache, v_cache, block_tables, seq_lens, scale):
        dims = check_decode(q, k_cache, v_cache, block_tables, seq_lens)
        if q.shape[0] == 0:
            return torch.empty_like(q)
        memo = self._decode_memo(block_tables, seq_lens, dims)  # validates, once per step
        out = native_decode(q, k_cache, v_cache, block_tables, seq_lens, scale)
        if out is not None:
            return out
        if memo.plan is None:  # the SDPA path's block list and mask, once per step
            memo.plan = decode_plan(
                block_tables, seq_lens, memo.max_len, dims.num_blocks, dims.block_size
            )
        return decode_with_plan(q, k_cache, v_cache, memo.plan, scale)

    def _decode_memo(
        self, block_tables: torch.Tensor, seq_lens: torch.Tensor, dims: CacheDims
    ) -> _DecodeMemo:
        memo = self._memo  # one read: copies of the inputs last validated
        if (
            memo is not None
            and memo.dims == dims
            and _same(memo.block_tables, block_tables)
            and _same(memo.seq_lens, seq_lens)
        ):
            return memo
        lens = seq_lens.tolist()
        check_values(len(lens), block_tables, list(range(len(lens) + 1)), lens, dims)
        memo = _DecodeMemo(block_tables.clone(), seq_lens.clone(), dims, max(lens))
        self._memo = memo
        return memo


@dataclass
class _DecodeMemo:
    """A step's decode metadata, validated; the SDPA path's plan is built on first use."""

    block_tables: torch.Tensor  # copy
    seq_lens: torch.Tensor  # copy
    dims: CacheDims
    max_len: int
    plan: DecodePlan | None = None
