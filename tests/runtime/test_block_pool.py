"""BlockPool: exact block ids through allocate / free / touch / eviction, and check_integrity."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from helix.runtime.block_hash import hash_block_tokens
from helix.runtime.block_pool import BlockPool, KVBlock, OutOfBlocksError

PoolFactory = Callable[..., BlockPool]


def _free_ids(pool: BlockPool) -> list[int]:
    return [block.block_id for block in pool.free_queue]


def _ids(blocks: list[KVBlock]) -> list[int]:
    return [block.block_id for block in blocks]


def _cache_all(pool: BlockPool, blocks: list[KVBlock]) -> list[bytes]:
    hashes = [hash_block_tokens(None, [block.block_id] * pool.block_size) for block in blocks]
    for block, block_hash in zip(blocks, hashes, strict=True):
        assert pool.cache_block(block, block_hash)
    return hashes


def test_allocate_pops_from_head_with_ref_one(make_pool: PoolFactory) -> None:
    pool = make_pool(num_blocks=8)
    blocks = pool.allocate(3)
    assert _ids(blocks) == [0, 1, 2]
    assert [block.ref_cnt for block in blocks] == [1, 1, 1]
    assert pool.num_free_blocks == 5
    assert pool.usage == pytest.approx(3 / 8)
    assert _free_ids(pool) == [3, 4, 5, 6, 7]
    pool.free(blocks)


def test_allocate_too_many_raises_without_side_effects(make_pool: PoolFactory) -> None:
    pool = make_pool(num_blocks=4)
    held = pool.allocate(3)
    with pytest.raises(OutOfBlocksError, match="cannot allocate 2 KV blocks: only 1 of 4"):
        pool.allocate(2)
    assert pool.num_free_blocks == 1
    with pytest.raises(ValueError, match="num_blocks"):
        pool.allocate(-1)
    pool.free(held)


def test_free_releases_tail_first_and_uncached_blocks_go_to_head(make_pool: PoolFactory) -> None:
    pool = make_pool(num_blocks=8)
    blocks = pool.allocate(4)  # 0 1 2 3
    _cache_all(pool, blocks[:2])  # 0 and 1 hold a prefix; 2 and 3 hold nothing reusable
    pool.free(blocks)
    # 3 then 2 go to the head (reused first); 1 then 0 go to the tail (evicted last, tail first).
    assert _free_ids(pool) == [2, 3, 4, 5, 6, 7, 1, 0]
    assert _ids(pool.allocate(7)) == [2, 3, 4, 5, 6, 7, 1]
    assert pool.num_cached_blocks == 1  # block 1 was evicted on reuse; block 0 stays a hit


def test_lru_eviction_order_and_lazy_hash_eviction(make_pool: PoolFactory) -> None:
    pool = make_pool(num_blocks=4)
    b0, b1, b2, b3 = blocks = pool.allocate(4)
    h0, h1, h2, _ = _cache_all(pool, blocks)
    pool.free([b0, b1])  # released as 1, 0
    pool.free([b2, b3])  # released as 3, 2
    assert _free_ids(pool) == [1, 0, 3, 2]
    # Freed blocks stay findable until reused.
    assert pool.get_cached_block(h1) is b1 and pool.get_cached_block(h2) is b2
    assert _ids(pool.allocate(1)) == [1]
    assert pool.get_cached_block(h1) is None and b1.block_hash is None
    assert pool.get_cached_block(h0) is b0
    pool.free([b1])  # uncached now: straight to the head
    assert _free_ids(pool) == [1, 0, 3, 2]


def test_touch_removes_from_the_middle_of_the_free_queue(make_pool: PoolFactory) -> None:
    pool = make_pool(num_blocks=5)
    blocks = pool.allocate(5)
    _cache_all(pool, blocks)
    pool.free(blocks)
    assert _free_ids(pool) == [4, 3, 2, 1, 0]
    pool.touch([blocks[2]])
    assert blocks[2].ref_cnt == 1
    assert _free_ids(pool) == [4, 3, 1, 0]
    pool.touch([blocks[2]])  # already referenced: ref count only
    assert blocks[2].ref_cnt == 2 and pool.num_free_blocks == 4
    pool.free([blocks[2]])
    pool.free([blocks[2]])
    assert _free_ids(pool) == [4, 3, 1, 0, 2]


def test_cache_block_first_writer_wins_and_needs_a_reference(make_pool: PoolFactory) -> None:
    pool = make_pool(num_blocks=4)
    a, b = pool.allocate(2)
    block_hash = hash_block_tokens(None, [1, 2, 3, 4])
    assert pool.cache_block(a, block_hash)
    assert not pool.cache_block(b, block_hash)  # duplicate content stays uncached
    assert b.block_hash is None and pool.get_cached_block(block_hash) is a
    pool.free([a, b])
    with pytest.raises(RuntimeError, match="unreferenced"):
        pool.cache_block(a, block_hash)


def test_prefix_caching_disabled_caches_nothing(make_pool: PoolFactory) -> None:
    pool = make_pool(num_blocks=4, enable_prefix_caching=False)
    (block,) = pool.allocate(1)
    assert not pool.cache_block(block, hash_block_tokens(None, [1]))
    assert pool.num_cached_blocks == 0
    pool.free([block])


def test_reset_prefix_cache_only_when_idle(make_pool: PoolFactory) -> None:
    pool = make_pool(num_blocks=4)
    blocks = pool.allocate(2)
    _cache_all(pool, blocks)
    assert not pool.reset_prefix_cache()
    pool.free(blocks)
    assert pool.reset_prefix_cache()
    assert pool.num_cached_blocks == 0
    assert all(block.block_hash is None for block in pool.blocks)


def test_double_free_is_refused(make_pool: PoolFactory) -> None:
    pool = make_pool(num_blocks=2)
    blocks = pool.allocate(1)
    pool.free(blocks)
    with pytest.raises(RuntimeError, match="double free"):
        pool.free(blocks)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda pool: setattr(pool.blocks[5], "ref_cnt", -1), "negative ref count"),
        (lambda pool: setattr(pool.blocks[5], "ref_cnt", 1), "both free and referenced"),
        (lambda pool: setattr(pool.blocks[0], "ref_cnt", 0), "not in the free queue"),
        (lambda pool: setattr(pool.blocks[0], "block_hash", b"x" * 32), "missing from the hash"),
        (lambda pool: setattr(pool.blocks[1], "block_hash", None), "another hash"),
        (lambda pool: setattr(pool.blocks[4], "prev_free", pool.blocks[6]), "back-link"),
    ],
)
def test_check_integrity_reports_corruption(corrupt: object, message: str) -> None:
    pool = BlockPool(num_blocks=8, block_size=4)
    held = pool.allocate(2)
    _cache_all(pool, held)
    pool.check_integrity()
    assert callable(corrupt)
    corrupt(pool)
    with pytest.raises(RuntimeError, match=message):
        pool.check_integrity()


@pytest.mark.parametrize(("num_blocks", "block_size"), [(0, 4), (4, 0)])
def test_pool_rejects_bad_sizes(num_blocks: int, block_size: int) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        BlockPool(num_blocks, block_size)
