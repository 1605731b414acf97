"""KVCacheManager and block hashes: prefix hits with exact block ids, salts, forks, eviction."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from helix.runtime.block_hash import NONE_HASH, hash_block_tokens, hash_new_blocks
from helix.runtime.block_pool import BlockPool
from helix.runtime.kv_cache import KVCacheManager
from helix.runtime.sequence import Sequence

PoolFactory = Callable[..., BlockPool]


def _prefill(kv: KVCacheManager, seq: Sequence) -> list[int]:
    """Admit `seq` with its prefix hits and compute its whole prompt, as one scheduler step."""
    hits, num_hit_tokens = kv.get_computed_blocks(seq)
    new_ids = kv.allocate_slots(seq, seq.num_tokens - num_hit_tokens, hits)
    assert new_ids is not None
    kv.commit_computed(seq, seq.num_tokens - seq.num_computed_tokens)
    return new_ids


def test_block_hashes_chain_and_cover_full_blocks_only() -> None:
    tokens = list(range(10))
    hashes = hash_new_blocks(tokens, 4, None, [])
    assert len(hashes) == 2  # tokens 8 and 9 form a partial block
    assert hashes[0] == hash_block_tokens(None, tokens[:4])
    assert hashes[1] == hash_block_tokens(hashes[0], tokens[4:8])
    assert hash_block_tokens(None, tokens[:4]) == hash_block_tokens(NONE_HASH, tokens[:4])
    assert hash_new_blocks(tokens + [10, 11], 4, None, hashes) == [
        hash_block_tokens(hashes[1], [8, 9, 10, 11])
    ]
    salted = hash_new_blocks(tokens, 4, "tenant-a", [])
    assert salted[0] == hash_block_tokens(None, tokens[:4], ("tenant-a",))
    assert salted[1] == hash_block_tokens(salted[0], tokens[4:8])  # salt on the first block only
    assert hash_block_tokens(None, [1], ("ab",)) != hash_block_tokens(None, [1], ("a", "b"))
    assert hash_block_tokens(None, [1], (1,)) != hash_block_tokens(None, [1], ("1",))
    with pytest.raises(TypeError, match="extra key"):
        hash_block_tokens(None, [1], (1.5,))  # type: ignore[arg-type]


def test_block_hashes_are_stable_across_processes() -> None:
    code = (
        "from helix.runtime.block_hash import hash_new_blocks as h;"
        "print(h([1, 2, 3, 4], 4, 's', [])[0].hex())"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("0", "1")
    }
    assert outputs == {hash_new_blocks([1, 2, 3, 4], 4, "s", [])[0].hex()}


def test_prefix_sharing_between_two_prompts(make_pool: PoolFactory) -> None:
    pool = make_pool(num_blocks=10, block_size=4)
    kv = KVCacheManager(pool)
    first = Sequence("a", list(range(11)))
    assert _prefill(kv, first) == [0, 1, 2]
    assert pool.num_cached_blocks == 2  # tokens 8..10 fill only part of block 2

    second = Sequence("b", list(range(8)) + [100, 101, 102])
    hits, num_hit_tokens = kv.get_computed_blocks(second)
    assert [block.block_id for block in hits] == [0, 1] and num_hit_tokens == 8
    assert kv.allocate_slots(second, 3, hits) == [0, 1, 3]
    assert (second.num_computed_tokens, second.num_cached_tokens) == (8, 8)
    assert [pool.blocks[i].ref_cnt for i in range(4)] == [2, 2, 1, 1]

    kv.free(first)
    assert [block.block_id for block in pool.free_queue] == [2, 4, 5, 6, 7, 8, 9]
    kv.free(second)
    assert [block.block_id for block in pool.free_queue] == [3, 2, 4, 5, 6, 7, 8, 9, 1, 0]
    assert second.num_computed_tokens == 0 and second.block_table == []


def test_last_token_is_always_recomputed(make_pool: PoolFactory) -> None:
    pool = make_pool(num_blocks=10, block_size=4)
    kv = KVCacheManager(pool)
    _prefill(kv, Sequence("a", list(range(12))))
    again = Sequence("b", list(range(8)))  # both of its blocks are cached
    hits, num_hit_tokens = kv.get_computed_blocks(again)
    assert [block.block_id for block in hits] == [0] and num_hit_tokens == 4
    assert kv.allocate_slots(again, 4, hits) == [0, 3]


def test_cache_salt_separates_tenants(make_pool: PoolFactory) -> None:
    pool = make_pool(num_blocks=10, block_size=4)
    kv = KVCacheManager(pool)
    prompt = list(range(9))
    _prefill(kv, Sequence("a", prompt, cache_salt="tenant-a"))
    assert kv.get_computed_blocks(Sequence("b", prompt, cache_salt="tenant-b")) == ([], 0)
    assert kv.get_computed_blocks(Sequence("c", prompt)) == ([], 0)
    hits, num_hit_tokens = kv.get_computed_blocks(Sequence("d", prompt, cache_salt="tenant-a"))
    assert [block.block_id for block in hits] == [0, 1] and num_hit_tokens == 8


def test_allocate_slots_never_allocates_halfway(make_pool: PoolFactory) -> None:
    pool = make_pool(num_blocks=3, block_size=4)
    kv = KVCacheManager(pool)
    holder = Sequence("a", list(range(8)))
    assert kv.allocate_slots(holder, 8) == [0, 1]
    big = Sequence("b", list(range(100, 109)))
    assert not kv.can_allocate(big, 9)
    assert kv.allocate_slots(big, 9) is None
    assert big.block_table == [] and pool.num_free_blocks == 1
    assert kv.allocate_slots(big, 4) == [2]  # one chunk fits
    kv.commit_computed(big, 4)
    with pytest.raises(ValueError, match="cannot allocate"):
        kv.allocate_slots(big, 6)  # only 5 tokens are left to compute
    kv.free(big)
    kv.free(holder)


def test_hits_on_free_blocks_count_against_free_space(make_pool: PoolFactory) -> None:
    pool = make_pool(num_blocks=4, block_size=4)
    kv = KVCacheManager(pool)
    first = Sequence("a", list(range(9)))
    _prefill(kv, first)
    kv.free(first)  # blocks 0 and 1 stay cached while free
    hog = Sequence("hog", [7] * 4)
    assert kv.allocate_slots(hog, 4) == [2]
    repeat = Sequence("b", list(range(9)))
    hits, _ = kv.get_computed_blocks(repeat)
    assert [block.block_id for block in hits] == [0, 1]
    assert kv.allocate_slots(repeat, 1, hits) == [0, 1, 3]
    assert pool.num_free_blocks == 0
    kv.free(repeat)
    kv.free(hog)


def test_allocation_evicts_least_recently_freed_prefix(make_pool: PoolFactory) -> None:
    pool = make_pool(num_blocks=5, block_size=4)
    kv = KVCacheManager(pool)
    old, new = Sequence("old", list(range(5))), Sequence("new", list(range(50, 55)))
    _prefill(kv, old)  # blocks 0 (cached), 1
    _prefill(kv, new)  # blocks 2 (cached), 3
    kv.free(old)
    kv.free(new)
    assert [block.block_id for block in pool.free_queue] == [3, 1, 4, 0, 2]
    filler = Sequence("filler", [9] * 16)
    assert kv.allocate_slots(filler, 16) == [3, 1, 4, 0]  # evicts old's prefix, keeps new's
    assert kv.get_computed_blocks(Sequence("x", list(range(5)))) == ([], 0)
    assert kv.get_computed_blocks(Sequence("y", list(range(50, 55))))[1] == 4
    kv.free(filler)


def test_fork_shares_full_blocks_and_copies_the_partial_tail(make_pool: PoolFactory) -> None:
    pool = make_pool(num_blocks=10, block_size=4)
    kv = KVCacheManager(pool)
    parent = Sequence("p", list(range(10)), max_tokens=4)
    _prefill(kv, parent)
    parent.append_tokens([7])
    child = Sequence("p#1", list(range(10)), max_tokens=4)
    child.append_tokens([8])  # its own first sample
    assert kv.fork(parent, child) == [(2, 3)]
    assert parent.block_table == [0, 1, 2] and child.block_table == [0, 1, 3]
    assert child.num_computed_tokens == 10
    assert [pool.blocks[i].ref_cnt for i in range(4)] == [2, 2, 1, 1]
    assert kv.allocate_slots(child, 1) == []  # token 10 fits the copied tail block
    kv.commit_computed(child, 1)
    kv.free(parent)
    assert [pool.blocks[i].ref_cnt for i in range(4)] == [1, 1, 0, 1]
    kv.free(child)


def test_fork_on_a_block_boundary_needs_no_copy(make_pool: PoolFactory) -> None:
    pool = make_pool(num_blocks=4, block_size=4)
    kv = KVCacheManager(pool)
    parent = Sequence("p", list(range(8)))
    _prefill(kv, parent)
    child = Sequence("c", list(range(8)))
    assert kv.fork(parent, child) == []
    assert child.block_table == [0, 1]
    with pytest.raises(ValueError, match="fresh"):
        kv.fork(parent, child)
    kv.free(parent)
    kv.free(child)


def test_fork_without_a_free_block_changes_nothing(make_pool: PoolFactory) -> None:
    pool = make_pool(num_blocks=3, block_size=4)
    kv = KVCacheManager(pool)
    parent = Sequence("p", list(range(10)))
    _prefill(kv, parent)
    child = Sequence("c", list(range(10)))
    assert kv.fork(parent, child) is None
    assert child.block_table == [] and [b.ref_cnt for b in pool.blocks] == [1, 1, 1]
    with pytest.raises(ValueError, match="differs"):
        kv.fork(parent, Sequence("d", list(range(1, 11))))
    with pytest.raises(ValueError, match="cache_salt"):
        kv.fork(parent, Sequence("e", list(range(10)), cache_salt="other"))
    kv.free(parent)


def test_prefix_caching_disabled_never_hits(make_pool: PoolFactory) -> None:
    pool = make_pool(num_blocks=6, block_size=4, enable_prefix_caching=False)
    kv = KVCacheManager(pool)
    _prefill(kv, Sequence("a", list(range(9))))
    assert pool.num_cached_blocks == 0
    assert kv.get_computed_blocks(Sequence("b", list(range(9)))) == ([], 0)


def test_commit_rejects_tokens_beyond_slots(make_pool: PoolFactory) -> None:
    pool = make_pool(num_blocks=4, block_size=4)
    kv = KVCacheManager(pool)
    seq = Sequence("a", list(range(9)))
    kv.allocate_slots(seq, 4)
    with pytest.raises(ValueError, match="allocated slots"):
        kv.commit_computed(seq, 5)
    kv.free(seq)
