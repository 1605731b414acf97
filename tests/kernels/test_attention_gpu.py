"""Real-GPU runs of the triton and pallas kernels (no interpret mode) at model-like shapes.

Skipped without CUDA. The float64 loop reference is too slow here, so the torch backend (itself
checked against the loops in test_torch_attention.py) is the reference.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from helix.kernels import get_attention
from helix.kernels.testing import compare_to_reference, make_paged_case

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET") == "1",
        reason="TRITON_INTERPRET=1 would run the CPU interpreter",
    ),
]

# Decode-only rows (q_len 1), a long prompt, chunks behind cached prefixes, a single sequence.
LARGE = {
    "mixed": {
        "seq_lens": [1, 100, 517, 1024, 2000, 64, 33, 700],
        "query_lens": [1, 100, 17, 256, 1, 64, 1, 128],
    },
    "one_long": {"seq_lens": [4000], "query_lens": [96]},
}
TOLERANCE = {torch.float32: 2e-4, torch.bfloat16: 3e-2}


def _skip_unless_available(name: str) -> None:
    if name == "triton" and importlib.util.find_spec("triton") is None:
        pytest.skip("triton not installed")
    if name == "pallas":
        jax = pytest.importorskip("jax")
        if jax.default_backend() != "gpu":
            pytest.skip("jax has no GPU backend")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("shape", sorted(LARGE))
@pytest.mark.parametrize("name", ["triton", "pallas"])
def test_gpu_matches_torch(name: str, shape: str, block_size: int, dtype: torch.dtype) -> None:
    _skip_unless_available(name)
    case = make_paged_case(
        **LARGE[shape],
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        block_size=block_size,
        dtype=dtype,
        device="cuda",
        num_pad_tokens=3,
    )
    errors = compare_to_reference(get_attention(name), case, reference=get_attention("torch"))
    assert errors["write_kv"] == 0.0, errors
    assert errors["prefill"] <= TOLERANCE[dtype], errors
    assert errors["decode"] <= TOLERANCE[dtype], errors


@pytest.mark.parametrize("num_splits", [1, 3, 8])
def test_gpu_triton_decode_splits(num_splits: int) -> None:
    _skip_unless_available("triton")
    from helix.kernels.triton_attention import triton_decode

    case = make_paged_case(
        [3000, 5, 1500],
        [1, 1, 1],
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        block_size=16,
        dtype=torch.bfloat16,
        device="cuda",
    )
    args = (case.q_decode, case.k_cache, case.v_cache, case.block_tables, case.seq_lens, case.scale)
    expected = get_attention("torch").decode(*args)
    torch.testing.assert_close(
        triton_decode(*args, num_splits=num_splits), expected, atol=3e-2, rtol=3e-2
    )
