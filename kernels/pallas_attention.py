"""Paged attention in JAX/Pallas.

Three layers (STYLE habit 11), ground truth in ``torch_attention.reference_*``:
- kernels ``_decode_kernel`` / ``_prefill_kernel``: every ref carries its block shape;
- ``pallas_call`` wrappers ``_decode_call`` / ``_prefill_call`` (jitted);
- public ``pallas_write_kv`` / ``pallas_decode`` / ``pallas_prefill`` on jax arrays: validate
  shapes and dtypes (``ValueError``) and take ``interpret`` (default: True on CPU arrays, the
  only way Pallas runs there).
``PallasAttention`` adapts torch tensors through DLPack for the registry.

jax is imported inside functions only, so importing this module stays cheap.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from .backend import AttentionBackend
from .validate import check_decode, check_prefill, check_values, check_write_kv

if TYPE_CHECKING:
    import jax
    import torch

MASK_VALUE = -1e30  # finite start for the running max: exp(MASK_VALUE - m) is 0, never NaN


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


def _attend_pages(
    q, k_cache_ref, v_cache_ref, table_ref, step, visible, carry, *, scale, pages_per_step
):
    """One online-softmax step over ``pages_per_step`` cache blocks of one sequence.

    q: [R, D]; refs as in the kernels; visible(pos [N]) -> bool [R or 1, N]; carry = (max [R],
    denom [R], acc [R, D]) in fp32. N = pages_per_step * block_size.
    """
    import jax.numpy as jnp
    from jax import lax
    from jax.experimental import pallas as pl

    num_blocks, block_size, head_dim = k_cache_ref.shape
    m, denom, acc = carry
    ids = table_ref[pl.ds(step * pages_per_step, pages_per_step)]  # [P]
    ids = jnp.clip(ids, 0, num_blocks - 1)  # entries past the sequence's end may be -1
    tokens = pages_per_step * block_size
    k = k_cache_ref[ids].reshape(tokens, head_dim)  # [N, D]
    v = v_cache_ref[ids].reshape(tokens, head_dim)  # [N, D]
    precision = lax.Precision.HIGHEST if q.dtype == jnp.float32 else None
    s = jnp.dot(q, k.T, precision=precision, preferred_element_type=jnp.float32) * scale  # [R, N]
    pos = step * tokens + jnp.arange(tokens, dtype=jnp.int32)  # [N]
    s = jnp.where(visible(pos), s, -jnp.inf)
    m_new = jnp.maximum(m, s.max(axis=1))  # [R]
    alpha = jnp.exp(m - m_new)  # [R]
    p = jnp.exp(s - m_new[:, None])  # [R, N]
    denom = denom * alpha + p.sum(axis=1)
    pv = jnp.dot(p.astype(v.dtype), v, precision=precision, preferred_element_type=jnp.float32)
    return m_new, denom, acc * alpha[:, None] + pv  # [R], [R], [R, D]


def _softmax_loop(
    q, k_cache_ref, v_cache_ref, table_ref, num_steps, visible, first_step=0, **step_kw
):
    """Run ``_attend_pages`` for steps [first_step, num_steps): the fp32 carry (max [R],
    denom [R], acc [R, D]), unnormalised."""
    import jax.numpy as jnp
    from jax import lax

    rows, head_dim = q.shape
    init = (
        jnp.full((rows,), MASK_VALUE, jnp.float32),  # m: running max
        jnp.zeros((rows,), jnp.float32),  # denom: running sum of exp
        jnp.zeros((rows, head_dim), jnp.float32),  # acc: running weighted values
    )

    def body(step, carry):
        return _attend_pages(
            q, k_cache_ref, v_cache_ref, table_ref, step, visible, carry, **step_kw
        )

    return lax.fori_loop(first_step, num_steps, body, init)


def _normalised(carry):  # -> [R, D] fp32
    import jax.numpy as jnp

    _, denom, acc = carry
    return acc / jnp.where(denom > 0, denom, 1.0)[:, None]


def _decode_kernel(
    q_ref,  # [group_pad, D]: the query heads of one (sequence, kv head)
    k_cache_ref,  # [num_blocks, block_size, D]: one kv head of the K cache
    v_cache_ref,  # [num_blocks, block_size, D]
    table_ref,  # [max_blocks_pad] int32: this sequence's block table
    seq_len_ref,  # [1] int32
    o_ref,  # [group_pad, D]: the output, or with splits this split's unnormalised fp32 sum
    *split_refs,  # with splits: max_ref, denom_ref [group_pad] fp32
    scale: float,
    pages_per_step: int,
    steps_per_split: int,
):
    import jax.numpy as jnp
    from jax.experimental import pallas as pl

    seq_len = seq_len_ref[0]
    tokens = pages_per_step * k_cache_ref.shape[1]

    def visible(pos):  # pos: [N] -> [1, N]
        return (pos < seq_len)[None, :]

    num_steps = pl.cdiv(seq_len, tokens)
    first = 0
    if split_refs:  # this program walks steps [first, first + steps_per_split) of the context
        first = pl.program_id(2) * steps_per_split
        num_steps = jnp.minimum(num_steps, first + steps_per_split)
    carry = _softmax_loop(
        q_ref[...],
        k_cache_ref,
        v_cache_ref,
        table_ref,
        num_steps,
        visible,
        first_step=first,
        scale=scale,
        pages_per_step=pages_per_step,
    )
    if not split_refs:
        o_ref[...] = _normalised(carry).astype(o_ref.dtype)
        return
    max_ref, denom_ref = split_refs
    max_ref[...], denom_ref[...], o_ref[...] = carry


def _prefill_kernel(
    q_ref,  # [block_q * group, D]: row r = query tile * block_q + r // group, head r % group
    k_cache_ref,  # [num_blocks, block_size, D]: one kv head
    v_cache_ref,  # [num_blocks, block_size, D]
    table_ref,  # [max_blocks_pad] int32
    seq_len_ref,  # [1] int32
    q_len_ref,  # [1] int32
    o_ref,  # [block_q * group, D]
    *,
    scale: float,
    pages_per_step: int,
    block_q: int,
    group: int,
):
    import jax.numpy as jnp
    from jax.experimental import pallas as pl

    tile = pl.program_id(2)
    seq_len, q_len = seq_len_ref[0], q_len_ref[0]
    prefix_len = seq_len - q_len  # cached tokens before this step's queries
    rows = jnp.arange(block_q * group, dtype=jnp.int32)  # [R]
    query_pos = prefix_len + tile * block_q + rows // group  # [R] context positions

    def visible(pos):  # pos: [N] -> [R, N], causal and inside the context
        return (pos[None, :] <= query_pos[:, None]) & (pos < seq_len)[None, :]

    kv_end = jnp.minimum(seq_len, prefix_len + (tile + 1) * block_q)
    kv_end = jnp.where(tile * block_q < q_len, kv_end, 0)  # tile past this sequence's queries
    tokens = pages_per_step * k_cache_ref.shape[1]
    carry = _softmax_loop(
        q_ref[...],
        k_cache_ref,
        v_cache_ref,
        table_ref,
        pl.cdiv(kv_end, tokens),
        visible,
        scale=scale,
        pages_per_step=pages_per_step,
    )
    o_ref[...] = _normalised(carry).astype(o_ref.dtype)


# ---------------------------------------------------------------------------------------------
# pallas_call wrappers (jitted; all sizes static)
# ---------------------------------------------------------------------------------------------


def _compiler_params(interpret: bool, num_warps: int = 4) -> Any:
    if interpret:
        return None
    from jax.experimental.pallas import triton as plgpu

    return plgpu.CompilerParams(num_warps=num_warps, num_stages=2)


def _pad_table(block_tables: jax.Array, pages_per_step: int) -> jax.Array:  # [B, M_pad]
    import jax.numpy as jnp

    pad = -block_tables.shape[1] % pages_per_step
    return jnp.pad(block_tables, ((0, 0), (0, pad)), constant_values=-1)


def _kv_specs(k_cache: jax.Array, index_map) -> list[Any]:
    from jax.experimental import pallas as pl

    num_blocks, block_size, _, head_dim = k_cache.shape
    # [num_blocks, block_size, Hkv, D] -> one kv head: [num_blocks, block_size, D]
    return [pl.BlockSpec((num_blocks, block_size, None, head_dim), index_map)] * 2


@functools.cache
def _decode_call():
    import jax

    @functools.partial(
        jax.jit,
        static_argnames=("scale", "pages_per_step", "num_splits", "num_warps", "interpret"),
    )
    def call(
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        *,
        scale,
        pages_per_step,
        num_splits,
        num_warps,
        interpret,
    ):
        import jax.numpy as jnp
        from jax.experimental import pallas as pl

        num_seqs, num_heads, head_dim = q.shape  # q: [B, H, D]
        num_kv_heads = k_cache.shape[2]
        group = num_heads // num_kv_heads
        group_pad = max(16, _next_pow2(group))  # dot rows >= 16 on GPU
        q4 = q.reshape(num_seqs, num_kv_heads, group, head_dim)  # [B, Hkv, G, D]
        q4 = jnp.pad(q4, ((0, 0), (0, 0), (0, group_pad - group), (0, 0)))  # [B, Hkv, Gp, D]
        table = _pad_table(block_tables, pages_per_step)  # [B, M_pad]
        # Splits are sized from the table's width (static), like the Triton kernel's.
        max_steps = max(1, table.shape[1] // pages_per_step)
        steps_per_split = -(-max_steps // num_splits)
        num_splits = -(-max_steps // steps_per_split)  # drop splits that are always empty
        head_spec = pl.BlockSpec((None, None, group_pad, head_dim), lambda b, h, s: (b, h, 0, 0))
        if num_splits == 1:
            out_specs: Any = head_spec
            out_shape: Any = jax.ShapeDtypeStruct(q4.shape, q.dtype)
        else:  # per split: unnormalised sum [Gp, D], running max and denominator [Gp]
            per_split = (num_seqs, num_kv_heads, num_splits, group_pad)
            row_spec = pl.BlockSpec((None, None, None, group_pad), lambda b, h, s: (b, h, s, 0))
            out_specs = [
                pl.BlockSpec(
                    (None, None, None, group_pad, head_dim), lambda b, h, s: (b, h, s, 0, 0)
                ),
                row_spec,
                row_spec,
            ]
            out_shape = [
                jax.ShapeDtypeStruct((*per_split, head_dim), jnp.float32),
                jax.ShapeDtypeStruct(per_split, jnp.float32),
                jax.ShapeDtypeStruct(per_split, jnp.float32),
            ]
        out = pl.pallas_call(
            functools.partial(
                _decode_kernel,
                scale=scale,
                pages_per_step=pages_per_step,
                steps_per_split=steps_per_split,
            ),
            grid=(num_seqs, num_kv_heads, num_splits),
            in_specs=[
                head_spec,
                *_kv_specs(k_cache, lambda b, h, s: (0, 0, h, 0)),
                pl.BlockSpec((None, table.shape[1]), lambda b, h, s: (b, 0)),
                pl.BlockSpec((1,), lambda b, h, s: (b,)),
            ],
            out_specs=out_specs,
            out_shape=out_shape,
            interpret=interpret,
            compiler_params=_compiler_params(interpret, num_warps),
            name="helix_paged_decode",
        )(q4, k_cache, v_cache, table, seq_lens)
        if num_splits > 1:  # merge the splits' online-softmax states: [B, Hkv, Gp, D]
            acc, m, denom = out
            weight = jnp.exp(m - m.max(axis=2, keepdims=True))  # [B, Hkv, S, Gp]
            total = (weight * denom).sum(axis=2)  # [B, Hkv, Gp]
            out = (weight[..., None] * acc).sum(axis=2) / jnp.where(total > 0, total, 1.0)[
                ..., None
            ]
            out = out.astype(q.dtype)
        return out[:, :, :group].reshape(num_seqs, num_heads, head_dim)

    return call


@functools.cache
def _prefill_call():
    import jax

    @functools.partial(
        jax.jit,
        static_argnames=("scale", "max_query_len", "block_q", "pages_per_step", "interpret"),
    )
    def call(
        q,
        k_cache,
        v_cache,
        block_tables,
        query_start_loc,
        seq_lens,
        *,
        scale,
        max_query_len,
        block_q,
        pages_per_step,
        interpret,
    ):
        import jax.numpy as jnp
        from jax.experimental import pallas as pl

        num_tokens, num_heads, head_dim = q.shape  # q: [T, H, D]
        num_seqs, num_kv_heads = seq_lens.shape[0], k_cache.shape[2]
        group = num_heads // num_kv_heads
        group_pad = _next_pow2(group)  # Pallas on GPU needs power-of-two tiles (9/3 heads: 3)
        q_lens = query_start_loc[1:] - query_start_loc[:-1]  # [B]
        # Packed [T, H, D] -> padded [B, Qp, H, D], Qp = max_query_len rounded up to block_q.
        q_pad = -(-max_query_len // block_q) * block_q
        idx = query_start_loc[:-1, None] + jnp.arange(q_pad, dtype=jnp.int32)  # [B, Qp]
        is_query = jnp.arange(q_pad)[None, :] < q_lens[:, None]  # [B, Qp]
        qp = jnp.where(is_query[..., None, None], q[jnp.clip(idx, 0, num_tokens - 1)], 0)
        # Rows of one tile: block_q queries x group_pad heads of one kv head.
        qp = qp.reshape(num_seqs, q_pad, num_kv_heads, group, head_dim)  # [B, Qp, Hkv, G, D]
        qp = jnp.pad(qp, ((0, 0), (0, 0), (0, 0), (0, group_pad - group), (0, 0)))  # G -> Gp
        rows = block_q * group_pad
        qp = qp.transpose(0, 2, 1, 3, 4).reshape(num_seqs, num_kv_heads, q_pad * group_pad, -1)
        table = _pad_table(block_tables, pages_per_step)  # [B, M_pad]
        tile_spec = pl.BlockSpec((None, None, rows, head_dim), lambda b, h, t: (b, h, t, 0))
        scalar_spec = pl.BlockSpec((1,), lambda b, h, t: (b,))
        out = pl.pallas_call(
            functools.partial(
                _prefill_kernel,
                scale=scale,
                pages_per_step=pages_per_step,
                block_q=block_q,
                group=group_pad,
            ),
            grid=(num_seqs, num_kv_heads, q_pad // block_q),
            in_specs=[
                tile_spec,
                *_kv_specs(k_cache, lambda b, h, t: (0, 0, h, 0)),
                pl.BlockSpec((None, table.shape[1]), lambda b, h, t: (b, 0)),
                scalar_spec,
                scalar_spec,
            ],
            out_specs=tile_spec,
            out_shape=jax.ShapeDtypeStruct(qp.shape, q.dtype),
            interpret=interpret,
            compiler_params=_compiler_params(interpret),
            name="helix_paged_prefill",
        )(qp, k_cache, v_cache, table, seq_lens, q_lens)  # [B, Hkv, Qp * Gp, D]
        out = out.reshape(num_seqs, num_kv_heads, q_pad, group_pad, head_dim)[:, :, :, :group]
        out = out.transpose(0, 2, 1, 3, 4).reshape(num_seqs, q_pad, num_heads, head_dim)
        # Padded [B, Qp, H, D] -> packed [T, H, D].
        token = jnp.arange(num_tokens, dtype=jnp.int32)  # [T]
        seq = jnp.searchsorted(query_start_loc, token, side="right") - 1  # [T]
        return out[seq, token - query_start_loc[seq]]

    return call


@functools.cache
def _write_kv_call():
    import jax

    @jax.jit
    def call(key, value, k_cache, v_cache, slot_mapping):
        import jax.numpy as jnp

        num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
        num_slots = num_blocks * block_size
        slots = jnp.where(slot_mapping < 0, num_slots, slot_mapping)  # -1 -> out of range, dropped

        def scatter(cache, new):  # cache: [num_blocks, block_size, Hkv, D], new: [T, Hkv, D]
            flat = cache.reshape(num_slots, num_kv_heads, head_dim)
            return flat.at[slots].set(new, mode="drop").reshape(cache.shape)

        return scatter(k_cache, key), scatter(v_cache, value)

    return call


# ---------------------------------------------------------------------------------------------
# Public, validating functions on jax arrays
# ---------------------------------------------------------------------------------------------


def _require(name: str, ok: bool, problem: str) -> None:
    if not ok:
        raise ValueError(f"{name}: {problem}")


def _check_cache(k_cache: jax.Array, v_cache: jax.Array) -> tuple[int, int, int, int]:
    import jax.numpy as jnp

    _require("k_cache", k_cache.ndim == 4, f"expected 4 dims, got {k_cache.shape}")
    _require(
        "k_cache",
        k_cache.dtype in (jnp.float16, jnp.bfloat16, jnp.float32),
        f"unsupported dtype {k_cache.dtype}",
    )
    _require(
        "v_cache",
        v_cache.shape == k_cache.shape and v_cache.dtype == k_cache.dtype,
        f"{v_cache.shape} {v_cache.dtype} != k_cache {k_cache.shape} {k_cache.dtype}",
    )
    return k_cache.shape


def _check_query(q: jax.Array, k_cache: jax.Array) -> None:
    num_kv_heads, head_dim = k_cache.shape[2:]
    _require("q", q.ndim == 3 and q.shape[2] == head_dim, f"shape {q.shape} != [*, H, {head_dim}]")
    _require(
        "q",
        q.shape[1] % num_kv_heads == 0,
        f"num_heads {q.shape[1]} not a multiple of num_kv_heads {num_kv_heads}",
    )
    _require("q", q.dtype == k_cache.dtype, f"dtype {q.dtype} != k_cache {k_cache.dtype}")


def _check_index(name: str, x: jax.Array, shape: tuple[int | None, ...]) -> None:
    import jax.numpy as jnp

    ok = x.ndim == len(shape)
    ok = ok and all(s is None or s == d for s, d in zip(shape, x.shape, strict=True))
    _require(name, ok, f"shape {x.shape} does not match {shape}")
    _require(name, x.dtype == jnp.int32, f"dtype {x.dtype} != int32")


def _resolve(
    interpret: bool | None,
    x: jax.Array,
    pages_per_step: int | None,
    block_size: int,
    tokens_per_step: int = 64,
) -> tuple[bool, int]:
    """bf16 decode walks 128 tokens per step (the best of 64/128 on an H200,
    benchmarks/pallas_tune.py); fp32 decode and prefill walk 64, since their fp32 tiles of 128
    exceed the H200's shared memory."""
    if interpret is None:  # Pallas runs on CPU only in interpret mode
        interpret = next(iter(x.devices())).platform == "cpu"
    pages_per_step = pages_per_step or max(1, tokens_per_step // block_size)
    _require("pages_per_step", pages_per_step >= 1, f"must be >= 1, got {pages_per_step}")
    return interpret, pages_per_step


def pallas_write_kv(
    key: jax.Array,  # [T, Hkv, D]
    value: jax.Array,  # [T, Hkv, D]
    k_cache: jax.Array,  # [num_blocks, block_size, Hkv, D]
    v_cache: jax.Array,  # [num_blocks, block_size, Hkv, D]
    slot_mapping: jax.Array,  # [T] int32, -1 = skip
) -> tuple[jax.Array, jax.Array]:  # new (k_cache, v_cache)
    """Functional KV store: returns updated caches (jax arrays are immutable)."""
    _, _, num_kv_heads, head_dim = _check_cache(k_cache, v_cache)
    for name, x in (("key", key), ("value", value)):
        _require(
            name,
            x.shape == (key.shape[0], num_kv_heads, head_dim),
            f"shape {x.shape} != [T, {num_kv_heads}, {head_dim}]",
        )
        _require(name, x.dtype == k_cache.dtype, f"dtype {x.dtype} != k_cache {k_cache.dtype}")
    _check_index("slot_mapping", slot_mapping, (key.shape[0],))
    return _write_kv_call()(key, value, k_cache, v_cache, slot_mapping)


def pallas_decode(
    q: jax.Array,  # [B, H, D]
    k_cache: jax.Array,  # [num_blocks, block_size, Hkv, D]
    v_cache: jax.Array,  # [num_blocks, block_size, Hkv, D]
    block_tables: jax.Array,  # [B, M] int32
    seq_lens: jax.Array,  # [B] int32, each >= 1
    *,
    scale: float,
    pages_per_step: int | None = None,
    num_splits: int | None = None,
    num_warps: int = 8,
    interpret: bool | None = None,
) -> jax.Array:  # [B, H, D]
    """``num_splits`` (default: enough (sequence, kv head, split) programs to fill the GPU)
    divides each sequence's KV walk among programs whose partial softmax states are merged."""
    _, block_size, num_kv_heads, _ = _check_cache(k_cache, v_cache)
    _check_query(q, k_cache)
    _check_index("block_tables", block_tables, (q.shape[0], None))
    _check_index("seq_lens", seq_lens, (q.shape[0],))
    tokens = 128 if q.dtype.itemsize <= 2 else 64  # fp32 tiles of 128 exceed shared memory
    interpret, pages_per_step = _resolve(interpret, q, pages_per_step, block_size, tokens)
    if num_splits is None:
        num_splits = _default_num_splits(q, num_kv_heads, interpret)
    _require("num_splits", num_splits >= 1, f"must be >= 1, got {num_splits}")
    _require("num_warps", num_warps in (1, 2, 4, 8, 16), f"must be a power of two, got {num_warps}")
    return _decode_call()(
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        scale=float(scale),
        pages_per_step=pages_per_step,
        num_splits=num_splits,
        num_warps=num_warps,
        interpret=interpret,
    )


def _default_num_splits(q: jax.Array, num_kv_heads: int, interpret: bool) -> int:
    """Split the KV walk when (sequence, kv head) programs alone leave the GPU's cores idle."""
    if interpret:
        return 1
    cores = int(getattr(next(iter(q.devices())), "core_count", 0) or 132)
    programs = q.shape[0] * num_kv_heads
    return max(1, min(-(-4 * cores // programs), 32))


def pallas_prefill(
    q: jax.Array,  # [T, H, D]
    k_cache: jax.Array,  # [num_blocks, block_size, Hkv, D]
    v_cache: jax.Array,  # [num_blocks, block_size, Hkv, D]
    block_tables: jax.Array,  # [B, M] int32
    query_start_loc: jax.Array,  # [B + 1] int32
    seq_lens: jax.Array,  # [B] int32
    *,
    scale: float,
    max_query_len: int,
    block_q: int = 16,
    pages_per_step: int | None = None,
    interpret: bool | None = None,
) -> jax.Array:  # [T, H, D]
    """``max_query_len`` (static, >= every query length) sizes the padded query grid; bucket it
    (e.g. to a power of two) to bound recompilation."""
    _, block_size, _, _ = _check_cache(k_cache, v_cache)
    _check_query(q, k_cache)
    num_seqs = seq_lens.shape[0] if seq_lens.ndim == 1 else -1
    _check_index("seq_lens", seq_lens, (num_seqs,))
    _check_index("block_tables", block_tables, (num_seqs, None))
    _check_index("query_start_loc", query_start_loc, (num_seqs + 1,))
    _require("max_query_len", max_query_len >= 1, f"must be >= 1, got {max_query_len}")
    _require("block_q", block_q == _next_pow2(block_q), f"must be a power of two, got {block_q}")
    interpret, pages_per_step = _resolve(interpret, q, pages_per_step, block_size)
    return _prefill_call()(
        q,
        k_cache,
        v_cache,
        block_tables,
        query_start_loc,
        seq_lens,
        scale=float(scale),
        max_query_len=max_query_len,
        block_q=block_q,
        pages_per_step=pages_per_step,
        interpret=interpret,
    )


# ---------------------------------------------------------------------------------------------
# Registry adapter: torch in, torch out, via DLPack
# ---------------------------------------------------------------------------------------------


def _to_jax(x: torch.Tensor) -> jax.Array:
    import jax

    return jax.dlpack.from_dlpack(x.detach().contiguous())


def _to_torch(x: jax.Array) -> torch.Tensor:
    import torch

    return torch.from_dlpack(x)


def _check_jax_device(k_cache: torch.Tensor) -> None:
    import jax

    if k_cache.is_cuda:
        _require(
            "k_cache",
            jax.default_backend() == "gpu",
            "is a CUDA tensor but jax has no GPU backend (install jax[cuda12])",
        )


class PallasAttention(AttentionBackend):
    """Pallas kernels; interpret mode for CPU tensors.

    NOTE(kernels): jax arrays are immutable, so ``write_kv`` scatters into a copy of the cache
    and copies it back into the torch tensors: O(cache size) per call. Fine for tests and CPU
    runs; a GPU deployment should write KV with the torch or triton backend.
    """

    name = "pallas"
    block_q = 16

    def write_kv(self, key, value, k_cache, v_cache, slot_mapping) -> None:
        import torch

        check_write_kv(key, value, k_cache, v_cache, slot_mapping)
        _check_jax_device(k_cache)
        if key.shape[0] == 0:
            return
        k_new, v_new = pallas_write_kv(
            _to_jax(key),
            _to_jax(value),
            _to_jax(k_cache),
            _to_jax(v_cache),
            _to_jax(slot_mapping.to(torch.int32)),
        )
        k_cache.copy_(_to_torch(k_new))
        v_cache.copy_(_to_torch(v_new))

    def prefill(self, q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale):
        import torch

        dims = check_prefill(q, k_cache, v_cache, block_tables, query_start_loc, seq_lens)
        _check_jax_device(k_cache)
        starts, lens = query_start_loc.tolist(), seq_lens.tolist()
        check_values(q.shape[0], block_tables, starts, lens, dims)
        if q.shape[0] == 0:
            return torch.empty_like(q)
        max_query_len = max(b - a for a, b in zip(starts[:-1], starts[1:], strict=True))
        bucket = max(self.block_q, _next_pow2(max_query_len))  # bounded set of compilations
        out = pallas_prefill(
            _to_jax(q),
            _to_jax(k_cache),
            _to_jax(v_cache),
            _to_jax(block_tables),
            _to_jax(query_start_loc),
            _to_jax(seq_lens),
            scale=scale,
            max_query_len=bucket,
            block_q=self.block_q,
        )
        return _to_torch(out)

    def decode(self, q, k_cache, v_cache, block_tables, seq_lens, scale):
        import torch

        dims = check_decode(q, k_cache, v_cache, block_tables, seq_lens)
        _check_jax_device(k_cache)
        lens = seq_lens.tolist()
        check_values(q.shape[0], block_tables, list(range(q.shape[0] + 1)), lens, dims)
        if q.shape[0] == 0:
            return torch.empty_like(q)
        out = pallas_decode(
            _to_jax(q),
            _to_jax(k_cache),
            _to_jax(v_cache),
            _to_jax(block_tables),
            _to_jax(seq_lens),
            scale=scale,
        )
        return _to_torch(out)
