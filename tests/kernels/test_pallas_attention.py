"""Pallas backend vs the reference, in interpret mode on CPU (jax imported lazily)."""

from __future__ import annotations

import functools

import pytest
import torch

from helix.kernels import get_attention
from helix.kernels.testing import CASES, TOLERANCE, compare_to_reference, make_paged_case

pytest.importorskip("jax")

# Each (case, dtype) compiles three jitted programs (~1-2 s each in interpret mode): keep few.
COMBOS = [
    ("bs4_d16_mixed", torch.float32),
    ("bs16_d32_chunked", torch.float32),
    ("bs4_d16_mixed", torch.bfloat16),
    ("bs8_group3", torch.float32),
]


@pytest.mark.parametrize(("case_name", "dtype"), COMBOS, ids=lambda x: str(x))
def test_matches_reference(case_name: str, dtype: torch.dtype) -> None:
    case = make_paged_case(**CASES[case_name], dtype=dtype)
    errors = compare_to_reference(get_attention("pallas"), case)
    assert errors["write_kv"] == 0.0
    assert errors["prefill"] <= TOLERANCE[dtype], errors
    assert errors["decode"] <= TOLERANCE[dtype], errors


@pytest.mark.parametrize("num_splits", [2, 3, 8])
def test_split_kv_decode_matches_reference(num_splits: int) -> None:
    # Splits walk disjoint step ranges; some are empty for short sequences (8 splits of a
    # 2-step table), and their states must merge to the unsplit softmax.
    import jax.numpy as jnp
    import numpy as np

    from helix.kernels.pallas_attention import pallas_decode
    from helix.kernels.torch_attention import torch_decode

    case = make_paged_case([1, 37, 130, 64], [1, 1, 1, 1], block_size=4, seed=3)
    args = [case.q_decode, case.k_cache, case.v_cache, case.block_tables, case.seq_lens]
    expected = torch_decode(*args, case.scale, int(case.seq_lens.max()))
    got = pallas_decode(
        *(jnp.asarray(t.numpy()) for t in args),
        scale=case.scale,
        pages_per_step=2,
        num_splits=num_splits,
        interpret=True,
    )
    assert np.abs(np.asarray(got) - expected.numpy()).max() <= TOLERANCE[torch.float32]


def test_public_function_validates_jax_arrays() -> None:
    import jax.numpy as jnp

    from helix.kernels.pallas_attention import pallas_decode

    case = make_paged_case([5], [5])
    k, v = jnp.asarray(case.k_cache.numpy()), jnp.asarray(case.v_cache.numpy())
    q = jnp.asarray(case.q_decode.numpy())
    table, lens = jnp.asarray(case.block_tables.numpy()), jnp.asarray(case.seq_lens.numpy())
    with pytest.raises(ValueError, match="^q: dtype"):
        pallas_decode(q.astype(jnp.bfloat16), k, v, table, lens, scale=1.0)
    with pytest.raises(ValueError, match="^seq_lens:"):
        pallas_decode(q, k, v, table, lens.astype(jnp.float32), scale=1.0)
    with pytest.raises(ValueError, match="^v_cache:"):
        pallas_decode(q, k, v[:, :2], table, lens, scale=1.0)
    out = pallas_decode(q, k, v, table, lens, scale=case.scale, interpret=True)
    assert out.shape == q.shape


@pytest.mark.parametrize(
    ("num_heads", "num_kv_heads", "head_dim"), [(32, 8, 128), (9, 3, 64)], ids=["llama", "smollm2"]
)
def test_lowers_for_gpu_without_one(num_heads: int, num_kv_heads: int, head_dim: int) -> None:
    # Lowering to Triton IR needs no GPU and rejects what only the GPU path forbids, e.g.
    # tiles whose sizes are not powers of two.
    import jax
    import jax.numpy as jnp

    from helix.kernels.pallas_attention import _decode_call, _prefill_call

    num_seqs, max_blocks = 4, 8
    cache = jax.ShapeDtypeStruct((32, 16, num_kv_heads, head_dim), jnp.bfloat16)
    table = jax.ShapeDtypeStruct((num_seqs, max_blocks), jnp.int32)
    lens = jax.ShapeDtypeStruct((num_seqs,), jnp.int32)
    starts = jax.ShapeDtypeStruct((num_seqs + 1,), jnp.int32)
    static = {"scale": 0.1, "pages_per_step": 4, "interpret": False}
    q = jax.ShapeDtypeStruct((num_seqs, num_heads, head_dim), jnp.bfloat16)
    for splits in (1, 2):  # one program per (sequence, kv head), or a split KV walk
        decode = jax.jit(
            functools.partial(_decode_call(), num_splits=splits, num_warps=4, **static)
        )
        decode.trace(q, cache, cache, table, lens).lower(lowering_platforms=("cuda",))
    q = jax.ShapeDtypeStruct((40, num_heads, head_dim), jnp.bfloat16)
    prefill = jax.jit(functools.partial(_prefill_call(), max_query_len=32, block_q=16, **static))
    prefill.trace(q, cache, cache, table, starts, lens).lower(lowering_platforms=("cuda",))
