"""torch backend vs the pure-loop reference, plus argument validation shared by all backends."""

from __future__ import annotations

import pytest
import torch

from helix.kernels import get_attention
from helix.kernels.testing import CASES, TOLERANCE, compare_to_reference, make_paged_case
from helix.kernels.torch_attention import reference_decode, reference_prefill

DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case_name", sorted(CASES))
def test_matches_reference(case_name: str, dtype: torch.dtype) -> None:
    case = make_paged_case(**CASES[case_name], dtype=dtype)
    errors = compare_to_reference(get_attention("torch"), case)
    assert errors["write_kv"] == 0.0
    assert errors["prefill"] <= TOLERANCE[dtype], errors
    assert errors["decode"] <= TOLERANCE[dtype], errors


@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_block_sizes_and_gqa_groups(block_size: int) -> None:
    # H=8 over Hkv=2 (group 4) and a long-ish context spanning many shuffled blocks.
    case = make_paged_case(
        [33, 7],
        [11, 7],
        num_heads=8,
        num_kv_heads=2,
        head_dim=8,
        block_size=block_size,
        seed=block_size,
    )
    errors = compare_to_reference(get_attention("torch"), case)
    assert max(errors.values()) <= 1e-5, errors


def test_chunked_prefill_equals_whole_prompt() -> None:
    # Prefilling 12 tokens in chunks of 5, 5, 2 gives the same rows as one 12-token prefill.
    case = make_paged_case([12], [12], block_size=4, seed=3)
    attn = get_attention("torch")
    common = (case.k_cache, case.v_cache, case.block_tables)
    whole = attn.prefill(case.q_prefill, *common, case.query_start_loc, case.seq_lens, case.scale)
    for start, end in [(0, 5), (5, 10), (10, 12)]:
        chunk = attn.prefill(
            case.q_prefill[start:end],
            *common,
            torch.tensor([0, end - start], dtype=torch.int32),
            torch.tensor([end], dtype=torch.int32),
            case.scale,
        )
        torch.testing.assert_close(chunk, whole[start:end], atol=1e-6, rtol=1e-6)


def test_decode_is_last_prefill_row() -> None:
    case = make_paged_case([9, 14], [9, 14], block_size=4, seed=4)
    q_last = case.q_prefill[case.query_start_loc[1:].long() - 1]  # [B, H, D]
    common = (case.k_cache, case.v_cache, case.block_tables)
    via_prefill = reference_prefill(
        case.q_prefill, *common, case.query_start_loc, case.seq_lens, case.scale
    )
    via_decode = reference_decode(q_last, *common, case.seq_lens, case.scale)
    torch.testing.assert_close(via_decode, via_prefill[case.query_start_loc[1:].long() - 1])


def test_strided_query_is_accepted() -> None:
    case = make_paged_case(**CASES["bs4_d16_mixed"])
    wide = torch.cat([case.q_prefill, case.q_prefill], dim=1)  # [T, 2H, D]
    strided = wide[:, : case.q_prefill.shape[1]]  # a view, like q split out of a fused qkv
    attn = get_attention("torch")
    common = (case.k_cache, case.v_cache, case.block_tables, case.query_start_loc, case.seq_lens)
    torch.testing.assert_close(
        attn.prefill(strided, *common, case.scale),
        attn.prefill(case.q_prefill, *common, case.scale),
    )


def test_empty_batches() -> None:
    case = make_paged_case([4], [4])
    attn = get_attention("torch")
    q = case.q_decode[:0]
    out = attn.decode(
        q, case.k_cache, case.v_cache, case.block_tables[:0], case.seq_lens[:0], case.scale
    )
    assert out.shape == q.shape
    attn.write_kv(case.key[:0], case.value[:0], case.k_cache, case.v_cache, case.slot_mapping[:0])


def _bad_calls(case):  # (argument named in the error, call)
    attn = get_attention("torch")
    common = (case.k_cache, case.v_cache, case.block_tables)
    yield "q", lambda: attn.decode(case.q_decode.double(), *common, case.seq_lens, 1.0)
    yield "q", lambda: attn.decode(case.q_decode[:, :3], *common, case.seq_lens, 1.0)
    yield "seq_lens", lambda: attn.decode(case.q_decode, *common, case.seq_lens.long(), 1.0)
    yield (
        "block_tables",
        lambda: attn.decode(
            case.q_decode, case.k_cache, case.v_cache, case.block_tables[:1], case.seq_lens, 1.0
        ),
    )
    yield (
        "v_cache",
        lambda: attn.decode(
            case.q_decode, case.k_cache, case.v_cache[:, :2], case.block_tables, case.seq_lens, 1.0
        ),
    )
    yield (
        "query_start_loc",
        lambda: attn.prefill(
            case.q_prefill, *common, case.query_start_loc[:-1], case.seq_lens, 1.0
        ),
    )
    yield (
        "seq_lens",
        lambda: attn.prefill(case.q_prefill, *common, case.query_start_loc, case.seq_lens - 1, 1.0),
    )
    yield (
        "slot_mapping",
        lambda: attn.write_kv(
            case.key, case.value, case.k_cache, case.v_cache, case.slot_mapping.int()
        ),
    )
    yield (
        "value",
        lambda: attn.write_kv(
            case.key, case.value[:1], case.k_cache, case.v_cache, case.slot_mapping
        ),
    )


def test_bad_arguments_raise_value_error_naming_them() -> None:
    case = make_paged_case([5, 3], [2, 3])
    for name, call in _bad_calls(case):
        with pytest.raises(ValueError, match=f"^{name}:"):
            call()


def test_decode_notices_metadata_changed_in_place() -> None:
    # The backend reuses one step's decode plan across layers; editing the metadata tensors in
    # place (or passing equal-shaped new ones) must still give the right answer.
    case = make_paged_case([9, 14], [9, 14], block_size=4, seed=5)
    attn = get_attention("torch")
    common = (case.k_cache, case.v_cache)
    for lens in ([9, 14], [5, 14], [9, 3]):
        case.seq_lens.copy_(torch.tensor(lens, dtype=torch.int32))
        got = attn.decode(case.q_decode, *common, case.block_tables, case.seq_lens, case.scale)
        want = reference_decode(
            case.q_decode, *common, case.block_tables, case.seq_lens, case.scale
        )
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    case.block_tables.copy_(case.block_tables.flip(0))
    case.seq_lens.copy_(torch.tensor([4, 8], dtype=torch.int32))
    got = attn.decode(case.q_decode, *common, case.block_tables, case.seq_lens, case.scale)
    want = reference_decode(case.q_decode, *common, case.block_tables, case.seq_lens, case.scale)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_write_kv_notices_skipped_slots_after_a_full_step() -> None:
    case = make_paged_case([6], [6], block_size=4, seed=6)
    attn = get_attention("torch")
    k_cache, v_cache = case.k_cache.clone(), case.v_cache.clone()
    attn.write_kv(case.key, case.value, k_cache, v_cache, case.slot_mapping)
    skipped = case.slot_mapping.clone()
    skipped[2] = -1  # same shape, one slot skipped: must not be written
    before = k_cache.flatten(0, 1)[case.slot_mapping[2]].clone()
    attn.write_kv(case.key + 1, case.value + 1, k_cache, v_cache, skipped)
    assert torch.equal(k_cache.flatten(0, 1)[case.slot_mapping[2]], before)
    assert torch.equal(k_cache.flatten(0, 1)[case.slot_mapping[0]], case.key[0] + 1)
