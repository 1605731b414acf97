"""KV-cache manager: turns token counts into block-table edits over a `BlockPool`.

The only writer of `Sequence.block_table`, `block_hashes`, `num_computed_tokens` and
`num_cached_tokens`. Ask (`can_allocate`) before you mutate; `allocate_slots` re-checks and never
allocates halfway.
"""

from __future__ import annotations

from .block_hash import hash_new_blocks
from .block_pool import BlockPool, KVBlock
from .sequence import Sequence

BlockCopy = tuple[int, int]
"""(src_block_id, dst_block_id): the worker copies the KV of src into dst before the next step."""


class KVCacheManager:
    """Block bookkeeping of one engine node. Single-threaded: the scheduler owns it."""

    def __init__(self, pool: BlockPool) -> None:
        self.pool = pool
        self.block_size = pool.block_size
        # Leading blocks of each sequence already offered to the prefix cache.
        self._num_cached_blocks: dict[str, int] = {}

    def num_required_blocks(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def get_computed_blocks(self, seq: Sequence) -> tuple[list[KVBlock], int]:
        """Longest prefix-cache hit of a block-less `seq`, in full blocks, and its token count.

        Reads only; pass the blocks to `allocate_slots` to take them.
        """
        if seq.block_table:
            raise ValueError(f"{seq.request_id!r} already holds blocks; look up before allocating")
        if not self.pool.enable_prefix_caching:
            return [], 0
        self._sync_hashes(seq)
        # NOTE(helix): the last token is always recomputed, since its logits feed the sampler; so a
        # fully cached prompt still recomputes its whole last block.
        max_hit_blocks = (seq.num_tokens - 1) // self.block_size
        hits: list[KVBlock] = []
        for block_hash in seq.block_hashes[:max_hit_blocks]:
            block = self.pool.get_cached_block(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits, len(hits) * self.block_size

    def can_allocate(
        self, seq: Sequence, num_new_tokens: int, new_computed_blocks: list[KVBlock] | None = None
    ) -> bool:
        """Whether `allocate_slots` with the same arguments would succeed now."""
        hits = new_computed_blocks or []
        num_fresh = self._num_fresh_blocks(seq, num_new_tokens, hits)
        # Hits that are free right now leave the free queue too.
        num_free_hits = sum(1 for block in hits if block.ref_cnt == 0)
        return num_fresh + num_free_hits <= self.pool.num_free_blocks

    def allocate_slots(
        self, seq: Sequence, num_new_tokens: int, new_computed_blocks: list[KVBlock] | None = None
    ) -> list[int] | None:
        """Take `new_computed_blocks` (prefix hits) and fresh blocks for `num_new_tokens` more.

        Returns the block ids appended to `seq.block_table`, or None (nothing changed) when the
        pool is too small right now; the caller then preempts or waits. Hits count as computed.

        NOTE(helix): block layout after the call (hits only while the table is empty):

            | own computed blocks | prefix hits  | fresh blocks for the new tokens |
            |<-------------- seq.block_table, in token order -------------------->|
            0        seq.num_computed_tokens (hits included)   + num_new_tokens
        """
        hits = new_computed_blocks or []
        if not self.can_allocate(seq, num_new_tokens, hits):
            return None
        num_before = len(seq.block_table)
        num_fresh = self._num_fresh_blocks(seq, num_new_tokens, hits)
        self.pool.touch(hits)
        fresh = self.pool.allocate(num_fresh)
        seq.block_table.extend(block.block_id for block in hits)
        seq.block_table.extend(block.block_id for block in fresh)
        if num_before == 0:  # an admission: record its prefix hits
            seq.num_computed_tokens = len(hits) * self.block_size
            seq.num_cached_tokens = seq.num_computed_tokens
            self._num_cached_blocks[seq.request_id] = len(hits)
        return seq.block_table[num_before:]

    def commit_computed(self, seq: Sequence, num_tokens: int) -> None:
        """Mark `num_tokens` more tokens as computed and offer newly full blocks to the cache."""
        num_computed = seq.num_computed_tokens + num_tokens
        if num_tokens < 0 or num_computed > seq.num_tokens:
            raise ValueError(
                f"{seq.request_id!r}: cannot compute {num_tokens} more tokens "
                f"({seq.num_computed_tokens} of {seq.num_tokens} done)"
            )
        if num_computed > len(seq.block_table) * self.block_size:
            raise ValueError(f"{seq.request_id!r}: computed tokens exceed its allocated slots")
        seq.num_computed_tokens = num_computed
        self._cache_full_blocks(seq)

    def free(self, seq: Sequence) -> None:
        """Release every block of `seq` (tail first) and reset its computed count to zero."""
        self.pool.free([self.pool.blocks[block_id] for block_id in seq.block_table])
        seq.block_table.clear()
        seq.num_computed_tokens = 0
        self._num_cached_blocks.pop(seq.request_id, None)

    def fork(self, parent: Sequence, child: Sequence) -> list[BlockCopy] | None:
        """Give block-less `child` the computed KV of `parent` for `n > 1` sampling.

        Full blocks are shared by reference. The partial tail block is duplicated at once, so
        no copy-on-write is ever needed; the returned copy ops must run before the child's next
        step. Returns None (nothing changed) when no block is free for the tail.
        """
        num_computed = parent.num_computed_tokens
        if child is parent or child.block_table or child.num_computed_tokens:
            raise ValueError(f"fork target {child.request_id!r} must be a fresh sequence")
        if child.cache_salt != parent.cache_salt:
            raise ValueError("fork across different cache_salt values would leak KV")
        if child.all_token_ids[:num_computed] != parent.all_token_ids[:num_computed]:
            raise ValueError(f"{child.request_id!r} differs from its parent's computed tokens")
        num_full, num_tail_tokens = divmod(num_computed, self.block_size)
        if num_tail_tokens and self.pool.num_free_blocks < 1:
            return None
        shared = [self.pool.blocks[block_id] for block_id in parent.block_table[:num_full]]
        self.pool.touch(shared)
        child.block_table.extend(block.block_id for block in shared)
        copies: list[BlockCopy] = []
        if num_tail_tokens:
            (tail,) = self.pool.allocate(1)
            child.block_table.append(tail.block_id)
            copies.append((parent.block_table[num_full], tail.block_id))
        child.num_computed_tokens = num_computed
        child.block_hashes[:] = parent.block_hashes[:num_full]
        cached = min(self._num_cached_blocks.get(parent.request_id, 0), num_full)
        self._num_cached_blocks[child.request_id] = cached
        return copies

    def _num_fresh_blocks(self, seq: Sequence, num_new_tokens: int, hits: list[KVBlock]) -> int:
        if hits and seq.block_table:
            raise ValueError(f"{seq.request_id!r}: prefix hits apply only to an empty block table")
        num_tokens = seq.num_computed_tokens + len(hits) * self.block_size + num_new_tokens
        if num_new_tokens < 0 or num_tokens > seq.num_tokens:
            raise ValueError(
                f"{seq.request_id!r}: cannot allocate {num_new_tokens} new tokens "
                f"({seq.num_computed_tokens} computed of {seq.num_tokens})"
            )
        num_held = len(seq.block_table) + len(hits)
        return max(self.num_required_blocks(num_tokens) - num_held, 0)

    def _cache_full_blocks(self, seq: Sequence) -> None:
        num_full = seq.num_computed_tokens // self.block_size
        start = self._num_cached_blocks.get(seq.request_id, 0)
        if not self.pool.enable_prefix_caching or num_full <= start:
            return
        self._sync_hashes(seq)
        for index in range(start, num_full):
            block = self.pool.blocks[seq.block_table[index]]
            self.pool.cache_block(block, seq.block_hashes[index])
        self._num_cached_blocks[seq.request_id] = num_full

    def _sync_hashes(self, seq: Sequence) -> None:
        seq.block_hashes.extend(
            hash_new_blocks(seq.all_token_ids, self.block_size, seq.cache_salt, seq.block_hashes)
        )
