"""Argument checks shared by every backend: shapes, dtypes, devices -> ValueError naming the arg.

Checks read only metadata (no device sync). Value preconditions that would need a sync, such as
``seq_lens[b] <= max_blocks_per_seq * block_size`` or ``q_len_b <= seq_lens[b]``, are the
caller's job; the torch backend checks them because it syncs anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class CacheDims:
    num_blocks: int
    block_size: int
    num_kv_heads: int
    head_dim: int


def _fail(name: str, problem: str) -> None:
    raise ValueError(f"{name}: {problem}")


def _check_rank(name: str, x: torch.Tensor, rank: int) -> None:
    if not isinstance(x, torch.Tensor):
        _fail(name, f"expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != rank:
        _fail(name, f"expected {rank} dims, got shape {tuple(x.shape)}")


def _check_dtype(name: str, x: torch.Tensor, dtypes: tuple[torch.dtype, ...]) -> None:
    if x.dtype not in dtypes:
        _fail(name, f"dtype {x.dtype} not in {dtypes}")


def _check_device(name: str, x: torch.Tensor, device: torch.device) -> None:
    if x.device != device:
        _fail(name, f"on {x.device}, expected {device} like the KV cache")


def check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> CacheDims:
    _check_rank("k_cache", k_cache, 4)
    _check_rank("v_cache", v_cache, 4)
    _check_dtype("k_cache", k_cache, FLOAT_DTYPES)
    if v_cache.shape != k_cache.shape:
        _fail("v_cache", f"shape {tuple(v_cache.shape)} != k_cache {tuple(k_cache.shape)}")
    if v_cache.dtype != k_cache.dtype:
        _fail("v_cache", f"dtype {v_cache.dtype} != k_cache {k_cache.dtype}")
    _check_device("v_cache", v_cache, k_cache.device)
    return CacheDims(*k_cache.shape)


def _check_query(q: torch.Tensor, k_cache: torch.Tensor, dims: CacheDims) -> None:
    _check_rank("q", q, 3)
    if q.dtype != k_cache.dtype:
        _fail("q", f"dtype {q.dtype} != k_cache {k_cache.dtype}")
    _check_device("q", q, k_cache.device)
    if q.shape[2] != dims.head_dim:
        _fail("q", f"head_dim {q.shape[2]} != cache head_dim {dims.head_dim}")
    if q.shape[1] % dims.num_kv_heads != 0:
        _fail("q", f"num_heads {q.shape[1]} is not a multiple of num_kv_heads {dims.num_kv_heads}")


def _check_index(name: str, x: torch.Tensor, rank: int, dtype: torch.dtype, dev: torch.device):
    _check_rank(name, x, rank)
    _check_dtype(name, x, (dtype,))
    _check_device(name, x, dev)


def check_write_kv(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    slot_mapping: torch.Tensor,  # [T] int64
) -> CacheDims:
    dims = check_cache(k_cache, v_cache)
    for name, x in (("key", key), ("value", value)):
        _check_rank(name, x, 3)
        if tuple(x.shape[1:]) != (dims.num_kv_heads, dims.head_dim):
            _fail(name, f"shape {tuple(x.shape)} != [T, {dims.num_kv_heads}, {dims.head_dim}]")
        if x.dtype != k_cache.dtype:
            _fail(name, f"dtype {x.dtype} != k_cache {k_cache.dtype}")
        _check_device(name, x, k_cache.device)
    if value.shape[0] != key.shape[0]:
        _fail("value", f"{value.shape[0]} tokens != key {key.shape[0]}")
    _check_index("slot_mapping", slot_mapping, 1, torch.int64, k_cache.device)
    if slot_mapping.shape[0] != key.shape[0]:
        _fail("slot_mapping", f"{slot_mapping.shape[0]} slots != {key.shape[0]} tokens")
    return dims


def check_decode(
    q: torch.Tensor,  # [B, H, D]
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, M] int32
    seq_lens: torch.Tensor,  # [B] int32
) -> CacheDims:
    dims = check_cache(k_cache, v_cache)
    _check_query(q, k_cache, dims)
    _check_index("block_tables", block_tables, 2, torch.int32, k_cache.device)
    _check_index("seq_lens", seq_lens, 1, torch.int32, k_cache.device)
    num_seqs = q.shape[0]
    if block_tables.shape[0] != num_seqs:
        _fail("block_tables", f"{block_tables.shape[0]} rows != {num_seqs} sequences in q")
    if seq_lens.shape[0] != num_seqs:
        _fail("seq_lens", f"{seq_lens.shape[0]} entries != {num_seqs} sequences in q")
    return dims


def check_prefill(
    q: torch.Tensor,  # [T, H, D]
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, M] int32
    query_start_loc: torch.Tensor,  # [B + 1] int32
    seq_lens: torch.Tensor,  # [B] int32
) -> CacheDims:
    dims = check_cache(k_cache, v_cache)
    _check_query(q, k_cache, dims)
    _check_index("block_tables", block_tables, 2, torch.int32, k_cache.device)
    _check_index("query_start_loc", query_start_loc, 1, torch.int32, k_cache.device)
    _check_index("seq_lens", seq_lens, 1, torch.int32, k_cache.device)
    num_seqs = seq_lens.shape[0]
    if block_tables.shape[0] != num_seqs:
        _fail("block_tables", f"{block_tables.shape[0]} rows != {num_seqs} entries in seq_lens")
    if query_start_loc.shape[0] != num_seqs + 1:
        _fail("query_start_loc", f"{query_start_loc.shape[0]} entries != num_seqs + 1")
    return dims


def check_values(
    num_tokens: int,
    block_tables: torch.Tensor,  # [B, M]
    query_start_loc: list[int],  # [B + 1]
    seq_lens: list[int],  # [B]
    dims: CacheDims,
) -> None:
    """Host-side value checks (need the index tensors on the host)."""
    if query_start_loc[0] != 0 or query_start_loc[-1] != num_tokens:
        _fail("query_start_loc", f"must run from 0 to {num_tokens}, got {query_start_loc}")
    capacity = block_tables.shape[1] * dims.block_size
    for b, seq_len in enumerate(seq_lens):
        q_len = query_start_loc[b + 1] - query_start_loc[b]
        if not 0 <= q_len <= seq_len <= capacity:
            _fail(
                "seq_lens",
                f"sequence {b}: need 0 <= q_len ({q_len}) <= seq_len ({seq_len}) <= "
                f"max_blocks_per_seq * block_size ({capacity})",
            )
