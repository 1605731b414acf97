"""Prefix caching on a pipeline node: every node keeps its own cache of full KV blocks.

A request's first pass may take a cached prefix instead of computing it (torch-free):

1. The coordinator allows it: `SeqWork.cache_cap` >= 0 on a pass from token 0.
2. The route's first node hashes the pass's full blocks (chained SHA-256, the same on every node),
   takes the longest run it holds (at most `cache_cap` tokens, never the pass's last token), runs
   only the rest, and tells the nodes after it which blocks it skipped (`prefix_hashes`).
3. Each later node takes those blocks from its own cache. One that lacks some answers with a
   prefix miss naming how many tokens it holds; the coordinator replays the request from token 0
   with `cache_cap` lowered to that, so the route agrees on a prefix every node holds.

Blocks are cached once computed, so any later request whose prompt starts the same way hits.
A node entered mid-range (partial inference) wrote KV for only some of its layers: it files those
blocks under a key that also names the first layer it ran, so they never pass for full blocks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from .block_hash import BlockHash, hash_new_blocks
from .block_pool import BlockPool, KVBlock


@dataclass
class PrefixState:
    """What a node remembers of one request to cache its blocks: token ids by position (0 where
    the node never saw them: the skipped prefix, whose hashes are known) and the hashes so far."""

    token_ids: list[int] = field(default_factory=list)
    hashes: list[BlockHash] = field(default_factory=list)
    """The chained hashes of its full blocks, as every node computes them."""
    salt: str | None = None
    skipped_layers: int = 0
    """Layers of this node's range the request skips here (partial inference); 0 normally."""

    def key(self, block_hash: BlockHash) -> BlockHash:
        """The key this node files a block under."""
        if not self.skipped_layers:
            return block_hash
        return hashlib.sha256(block_hash + b"skip%d" % self.skipped_layers).digest()


def first_node_hits(
    pool: BlockPool, state: PrefixState, token_ids: list[int], cache_cap: int
) -> tuple[list[KVBlock], list[BlockHash]]:
    """On the route's first node, for a pass over `token_ids` from position 0: the cached blocks
    of its longest cached prefix (at most `cache_cap` tokens, never all of `token_ids`) and their
    hashes."""
    size = pool.block_size
    max_blocks = min(cache_cap, len(token_ids) - 1) // size
    if max_blocks <= 0:
        return [], []
    hashes = hash_new_blocks(token_ids[: max_blocks * size], size, state.salt, [])
    hits = _consecutive_hits(pool, state, hashes)
    return hits, hashes[: len(hits)]


def later_node_hits(
    pool: BlockPool, state: PrefixState, prefix_hashes: list[BlockHash]
) -> list[KVBlock] | None:
    """On a later node: the blocks named by `prefix_hashes`, or None when some are missing."""
    hits = _consecutive_hits(pool, state, prefix_hashes)
    return hits if len(hits) == len(prefix_hashes) else None


def num_cached_tokens(pool: BlockPool, state: PrefixState, prefix_hashes: list[BlockHash]) -> int:
    """Tokens of the named prefix this node holds (what a prefix miss reports)."""
    return len(_consecutive_hits(pool, state, prefix_hashes)) * pool.block_size


def start_from_cache(
    pool: BlockPool, state: PrefixState, hits: list[KVBlock], hashes: list[BlockHash]
) -> list[int]:
    """Reference the hit blocks for a new request; returns its block table so far."""
    pool.touch(hits)
    state.hashes = list(hashes)
    state.token_ids = [0] * (len(hits) * pool.block_size)
    return [b.block_id for b in hits]


def commit(
    pool: BlockPool, state: PrefixState, block_table: list[int], start: int, token_ids: list[int]
) -> None:
    """Record the tokens [start, start + len(token_ids)) just computed; cache the blocks they
    filled."""
    if len(state.token_ids) < start:
        state.token_ids += [0] * (start - len(state.token_ids))
    state.token_ids[start:] = token_ids
    new = hash_new_blocks(state.token_ids, pool.block_size, state.salt, state.hashes)
    for index, block_hash in enumerate(new, start=len(state.hashes)):
        pool.cache_block(pool.blocks[block_table[index]], state.key(block_hash))
    state.hashes += new


def _consecutive_hits(
    pool: BlockPool, state: PrefixState, hashes: list[BlockHash]
) -> list[KVBlock]:
    hits = []
    for block_hash in hashes:
        block = pool.get_cached_block(state.key(block_hash))
        if block is None:
            break
        hits.append(block)
    return hits
