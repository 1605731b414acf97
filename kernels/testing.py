"""Random paged-attention problems for tests and benchmarks (imports torch).

``make_paged_case`` lays sequences out in a cache whose block ids are shuffled, so block tables
are never contiguous, and fills every slot (used or not) with random values, so a kernel that
reads past a sequence's end gives a wrong answer instead of a lucky zero.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .backend import AttentionBackend
from .torch_attention import reference_decode, reference_prefill, reference_write_kv

# Max abs error allowed against the float64 reference, by dtype.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


@dataclass
class PagedCase:
    q_prefill: torch.Tensor  # [T, H, D], the new tokens' queries, packed
    q_decode: torch.Tensor  # [B, H, D], one query per sequence at seq_lens[b] - 1
    key: torch.Tensor  # [T + num_pad, Hkv, D], the new tokens' keys (pads last)
    value: torch.Tensor  # [T + num_pad, Hkv, D]
    slot_mapping: torch.Tensor  # [T + num_pad] int64; pad tokens map to -1
    k_cache: torch.Tensor  # [num_blocks, block_size, Hkv, D], new tokens already written
    v_cache: torch.Tensor  # [num_blocks, block_size, Hkv, D]
    block_tables: torch.Tensor  # [B, M] int32, -1 past each sequence's last block
    query_start_loc: torch.Tensor  # [B + 1] int32
    seq_lens: torch.Tensor  # [B] int32
    scale: float


def make_paged_case(
    seq_lens: list[int],
    query_lens: list[int],
    *,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 16,
    block_size: int = 4,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    num_pad_tokens: int = 0,
    num_spare_blocks: int = 3,
    spare_table_cols: int = 1,
    seed: int = 0,
) -> PagedCase:
    """Build a problem where sequence b has ``seq_lens[b]`` tokens, the last ``query_lens[b]``
    of them new in this step (``query_lens[b] < seq_lens[b]`` means a cached prefix)."""
    if len(seq_lens) != len(query_lens):
        raise ValueError("query_lens: must have one entry per sequence")
    if any(not 0 <= ql <= sl for ql, sl in zip(query_lens, seq_lens, strict=True)):
        raise ValueError("query_lens: need 0 <= query_lens[b] <= seq_lens[b]")
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dtype=dtype, device=device)

    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + num_spare_blocks
    max_blocks = max(blocks_per_seq, default=0) + spare_table_cols
    order = torch.randperm(num_blocks, generator=gen).tolist()  # shuffled block ids
    block_tables = torch.full((len(seq_lens), max_blocks), -1, dtype=torch.int32)
    slots: list[int] = []
    for b, (seq_len, q_len) in enumerate(zip(seq_lens, query_lens, strict=True)):
        table = [order.pop() for _ in range(blocks_per_seq[b])]
        block_tables[b, : len(table)] = torch.tensor(table, dtype=torch.int32)
        for pos in range(seq_len - q_len, seq_len):
            slots.append(table[pos // block_size] * block_size + pos % block_size)
    slots += [-1] * num_pad_tokens

    num_new = sum(query_lens)
    key = randn(len(slots), num_kv_heads, head_dim)  # [T + pad, Hkv, D]
    value = randn(len(slots), num_kv_heads, head_dim)
    k_cache = randn(num_blocks, block_size, num_kv_heads, head_dim)
    v_cache = randn(num_blocks, block_size, num_kv_heads, head_dim)
    slot_mapping = torch.tensor(slots, dtype=torch.int64, device=device)
    keep = slot_mapping >= 0
    k_cache.view(-1, num_kv_heads, head_dim)[slot_mapping[keep]] = key[keep]
    v_cache.view(-1, num_kv_heads, head_dim)[slot_mapping[keep]] = value[keep]
    starts = [0]
    for q_len in query_lens:
        starts.append(starts[-1] + q_len)
    return PagedCase(
        q_prefill=randn(num_new, num_heads, head_dim),
        q_decode=randn(len(seq_lens), num_heads, head_dim),
        key=key,
        value=value,
        slot_mapping=slot_mapping,
        k_cache=k_cache,
        v_cache=v_cache,
        block_tables=block_tables.to(device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        scale=head_dim**-0.5,
    )


# Named problems shared by the kernel tests (H=4, Hkv=2 unless a case says otherwise). Between
# them: full prompts, cached prefixes, prefill chunks, a one-token prefill, a sequence with no
# new tokens, block sizes 4, 8 and 16, head_dim 16 and 32, GQA groups of 2 and 3 (not a power
# of two), shuffled block ids.
CASES: dict[str, dict[str, object]] = {
    "bs4_d16_mixed": {
        "seq_lens": [5, 17, 9, 1, 6],
        "query_lens": [5, 6, 1, 1, 0],
        "block_size": 4,
        "head_dim": 16,
        "num_pad_tokens": 2,
    },
    "bs16_d32_chunked": {
        "seq_lens": [40, 23, 16],
        "query_lens": [8, 23, 3],
        "block_size": 16,
        "head_dim": 32,
        "num_pad_tokens": 1,
    },
    "bs8_group3": {
        "seq_lens": [13, 4],
        "query_lens": [5, 4],
        "num_heads": 6,
        "block_size": 8,
        "head_dim": 16,
    },
}


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shape {tuple(a.shape)} != reference {tuple(b.shape)}")
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0


class LoopReference(AttentionBackend):
    """``reference_*`` behind the backend interface (ground truth for ``compare``)."""

    name = "reference"

    def write_kv(self, key, value, k_cache, v_cache, slot_mapping) -> None:
        reference_write_kv(key, value, k_cache, v_cache, slot_mapping)

    def prefill(self, q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale):
        return reference_prefill(
            q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale
        )

    def decode(self, q, k_cache, v_cache, block_tables, seq_lens, scale):
        return reference_decode(q, k_cache, v_cache, block_tables, seq_lens, scale)


def compare_to_reference(
    backend: AttentionBackend,
    case: PagedCase,
    *,
    reference: AttentionBackend | None = None,
    decode: Callable[..., torch.Tensor] | None = None,
) -> dict[str, float]:
    """Max abs error of ``backend`` against ``reference`` (default: the loops) for write_kv,
    prefill and decode. ``decode`` overrides ``backend.decode`` (e.g. forced KV splits)."""
    reference = reference or LoopReference()
    errors = {}
    k_out, v_out = torch.zeros_like(case.k_cache), torch.zeros_like(case.v_cache)
    k_ref, v_ref = torch.zeros_like(case.k_cache), torch.zeros_like(case.v_cache)
    backend.write_kv(case.key, case.value, k_out, v_out, case.slot_mapping)
    reference.write_kv(case.key, case.value, k_ref, v_ref, case.slot_mapping)
    errors["write_kv"] = max(_max_err(k_out, k_ref), _max_err(v_out, v_ref))

    common = (case.k_cache, case.v_cache, case.block_tables)
    prefill_args = (case.q_prefill, *common, case.query_start_loc, case.seq_lens, case.scale)
    errors["prefill"] = _max_err(backend.prefill(*prefill_args), reference.prefill(*prefill_args))

    decode_args = (case.q_decode, *common, case.seq_lens, case.scale)
    decode = decode or backend.decode
    errors["decode"] = _max_err(decode(*decode_args), reference.decode(*decode_args))
    return errors


def expects_native_kernels() -> bool:
    """Whether the compiled CPU kernels (``_cpu_ops.c``) should be here: an x86-64 Linux CPU with
    AVX2 and FMA, unless ``HELIX_NO_CPU_LINEAR=1`` says this install was built without them.
    Their tests fail where this is True and they are missing."""
    if os.environ.get("HELIX_NO_CPU_LINEAR") == "1" or platform.machine() != "x86_64":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags
