"""Decode attention through the compiled CPU kernel (kernels/_cpu_ops.c) against the float64
reference, and the torch backend's SDPA decode path with the kernel switched off.

The kernel is built by `pip install` with a C compiler; on an x86-64 CPU with AVX2 and FMA the
kernel tests fail when it is missing (HELIX_NO_CPU_LINEAR=1 skips them on a build without it).
"""

from __future__ import annotations

import pytest
import torch

import helix.kernels.torch_attention as torch_attention
from helix.kernels import get_attention
from helix.kernels.cpu_native import native_ops
from helix.kernels.testing import (
    CASES,
    TOLERANCE,
    compare_to_reference,
    expects_native_kernels,
    make_paged_case,
)
from helix.kernels.torch_attention import native_decode, reference_decode

DTYPES = [torch.float32, torch.bfloat16]


needs_kernel = pytest.mark.skipif(not expects_native_kernels(), reason="no CPU kernels expected")


@needs_kernel
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape",
    [(1, 4, 2, 16, 4), (3, 8, 2, 8, 1), (5, 12, 4, 64, 16), (2, 6, 6, 128, 16)],
    ids=lambda s: "B{}-H{}-Hkv{}-D{}-bs{}".format(*s),
)
def test_native_decode_matches_reference(dtype, shape) -> None:
    batch, heads, kv_heads, dim, block_size = shape
    assert native_ops() is not None, "helix.kernels._cpu_ops is not built (pip install -e .)"
    lens = [1, 37, 130, 16, 2][:batch]  # one token, block boundaries, a long context
    case = make_paged_case(
        lens,
        [1] * batch,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=dim,
        block_size=block_size,
        dtype=dtype,
        seed=batch,
    )
    args = (case.k_cache, case.v_cache, case.block_tables, case.seq_lens, case.scale)
    got = native_decode(case.q_decode, *args)
    assert got is not None and got.dtype == dtype and got.shape == case.q_decode.shape
    expected = reference_decode(case.q_decode, *args)
    assert (got.double() - expected.double()).abs().max().item() <= TOLERANCE[dtype]


@needs_kernel
def test_native_decode_is_used_and_long_batches_split_over_threads() -> None:
    """A batch big enough for several threads gives the bits of the same work on one thread
    (each (sequence, KV head) pair is one thread's)."""
    case = make_paged_case([300] * 8, [1] * 8, num_heads=8, head_dim=64, block_size=16, seed=7)
    args = (case.k_cache, case.v_cache, case.block_tables, case.seq_lens, case.scale)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native_decode(case.q_decode, *args)
        torch.set_num_threads(max(2, threads))
        many = native_decode(case.q_decode, *args)
    finally:
        torch.set_num_threads(threads)
    assert one is not None and many is not None and torch.equal(one, many)


def test_unsupported_inputs_fall_back() -> None:
    case = make_paged_case([5], [1], head_dim=12, seed=1)  # head_dim not a multiple of 8
    args = (case.k_cache, case.v_cache, case.block_tables, case.seq_lens, case.scale)
    assert native_decode(case.q_decode, *args) is None
    half = make_paged_case([5], [1], dtype=torch.float16, seed=1)
    args = (half.k_cache, half.v_cache, half.block_tables, half.seq_lens, half.scale)
    assert native_decode(half.q_decode, *args) is None


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case_name", sorted(CASES))
def test_sdpa_decode_path_matches_reference(case_name, dtype, monkeypatch) -> None:
    """The torch path the backend takes where the kernel does not apply (other devices, no
    compiler)."""
    monkeypatch.setattr(torch_attention, "native_decode", lambda *args: None)
    case = make_paged_case(**CASES[case_name], dtype=dtype)
    errors = compare_to_reference(get_attention("torch"), case)
    assert errors["decode"] <= TOLERANCE[dtype], errors
