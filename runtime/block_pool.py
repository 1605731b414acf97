"""A fixed pool of KV blocks: ref counts, an LRU free queue and a prefix-hash map.

Pure bookkeeping: block ids index the KV arrays that the stage owns; nothing here touches tensors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from .block_hash import BlockHash


class OutOfBlocksError(RuntimeError):
    """Raised by `BlockPool.allocate` when fewer blocks are free than requested."""


class KVBlock:
    """One KV block's metadata. `prev_free`/`next_free` are the intrusive free-queue links."""

    __slots__ = ("block_id", "ref_cnt", "block_hash", "prev_free", "next_free")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: BlockHash | None = None
        self.prev_free: KVBlock | None = None
        self.next_free: KVBlock | None = None

    def __repr__(self) -> str:
        cached = self.block_hash.hex()[:8] if self.block_hash is not None else None
        return f"KVBlock(id={self.block_id}, ref_cnt={self.ref_cnt}, hash={cached})"


class FreeBlockQueue:
    """Doubly linked list of free blocks threaded through the blocks themselves.

    The head is evicted first. Removing a block from the middle (a prefix hit on a free block) is
    O(1), which a deque cannot do.
    """

    def __init__(self, blocks: Sequence[KVBlock]) -> None:
        # NOTE(helix): sentinels remove every empty-list branch, and a block is queued iff its
        # links are set.
        self._head = KVBlock(-1)
        self._tail = KVBlock(-1)
        self._head.next_free = self._tail
        self._tail.prev_free = self._head
        self._len = 0
        for block in blocks:
            self.append(block)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[KVBlock]:
        node = self._head.next_free
        while node is not None and node is not self._tail:
            yield node
            node = node.next_free

    def check_links(self) -> set[int]:
        """Walk the queue, checking links and length; return the queued block ids."""
        queued: set[int] = set()
        prev = self._head
        for block in self:
            if block.prev_free is not prev:
                raise RuntimeError(f"free queue back-link broken at {block!r}")
            if block.block_id in queued or len(queued) > self._len:
                raise RuntimeError(f"free queue revisits {block!r} (cycle)")
            queued.add(block.block_id)
            prev = block
        if len(queued) != self._len or self._tail.prev_free is not prev:
            raise RuntimeError(f"free queue length {self._len} != {len(queued)} walked")
        return queued

    def popleft(self) -> KVBlock:
        block = self._head.next_free
        if block is None or block is self._tail:
            raise OutOfBlocksError("free block queue is empty")
        self.remove(block)
        return block

    def remove(self, block: KVBlock) -> None:
        prev, nxt = block.prev_free, block.next_free
        if prev is None or nxt is None:
            raise RuntimeError(f"{block!r} is not in the free queue")
        prev.next_free = nxt
        nxt.prev_free = prev
        block.prev_free = block.next_free = None
        self._len -= 1

    def append(self, block: KVBlock) -> None:
        self._insert_after(block, self._tail.prev_free)

    def appendleft(self, block: KVBlock) -> None:
        self._insert_after(block, self._head)

    def _insert_after(self, block: KVBlock, prev: KVBlock | None) -> None:
        if block.prev_free is not None or block.next_free is not None:
            raise RuntimeError(f"{block!r} is already in the free queue")
        assert prev is not None and prev.next_free is not None  # sentinels guarantee both
        nxt = prev.next_free
        block.prev_free, block.next_free = prev, nxt
        prev.next_free = block
        nxt.prev_free = block
        self._len += 1


class BlockPool:
    """Pre-allocated KV blocks with ref counts and lazy-LRU prefix caching.

    Contract: a block with `ref_cnt == 0` is in the free queue and may still carry a hash, so it
    stays a prefix hit until `allocate` pops it for reuse, which evicts the hash. Only
    `KVCacheManager` calls the mutating methods; nothing here locks (one scheduler thread per node).
    """

    def __init__(
        self, num_blocks: int, block_size: int = 16, enable_prefix_caching: bool = True
    ) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [KVBlock(block_id) for block_id in range(num_blocks)]
        self.free_queue = FreeBlockQueue(self.blocks)
        self._hash_to_block: dict[BlockHash, KVBlock] = {}

    @property
    def num_free_blocks(self) -> int:
        """Blocks that `allocate` can hand out now, cached-but-unreferenced ones included."""
        return len(self.free_queue)

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by at least one sequence, in [0, 1]."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    @property
    def num_cached_blocks(self) -> int:
        return len(self._hash_to_block)

    def get_cached_block(self, block_hash: BlockHash) -> KVBlock | None:
        """The block holding this prefix hash, referenced or free, or None."""
        return self._hash_to_block.get(block_hash)

    def cache_block(self, block: KVBlock, block_hash: BlockHash) -> bool:
        """Record that a referenced, full `block` holds `block_hash`. False if not recorded.

        NOTE(helix): first writer wins. A block filled with the same prefix at the same time as an
        already cached one stays uncached and is recycled first; block tables never change.
        """
        if block.ref_cnt <= 0:
            raise RuntimeError(f"cannot cache unreferenced {block!r}")
        if not self.enable_prefix_caching or block.block_hash is not None:
            return False
        if block_hash in self._hash_to_block:
            return False
        block.block_hash = block_hash
        self._hash_to_block[block_hash] = block
        return True

    def touch(self, blocks: Sequence[KVBlock]) -> None:
        """Take one more reference on each block; a free (cached) block leaves the free queue."""
        for block in blocks:
            if block.ref_cnt == 0:
                self.free_queue.remove(block)
            block.ref_cnt += 1

    def allocate(self, num_blocks: int) -> list[KVBlock]:
        """Pop `num_blocks` blocks from the queue head with `ref_cnt = 1`, evicting their hashes."""
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        if num_blocks > self.num_free_blocks:
            raise OutOfBlocksError(
                f"cannot allocate {num_blocks} KV blocks: only {self.num_free_blocks} of "
                f"{self.num_blocks} are free"
            )
        blocks = [self.free_queue.popleft() for _ in range(num_blocks)]
        for block in blocks:
            self._evict(block)
            block.ref_cnt = 1
        return blocks

    def free(self, blocks: Sequence[KVBlock]) -> None:
        """Drop one reference on each block, given in block-table order.

        Blocks are released tail first, so a sequence's last blocks (the least shared prefix) are
        evicted before its first ones. A block reaching zero joins the tail of the queue if it is
        cached; an uncached one holds nothing reusable and joins the head, to be reused first.
        """
        for block in reversed(blocks):
            if block.ref_cnt <= 0:
                raise RuntimeError(f"double free of {block!r}")
            block.ref_cnt -= 1
            if block.ref_cnt > 0:
                continue
            if block.block_hash is not None:
                self.free_queue.append(block)
            else:
                self.free_queue.appendleft(block)

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash. Refused (False) while any block is referenced."""
        if self.num_free_blocks != self.num_blocks:
            return False
        for block in self.blocks:
            block.block_hash = None
        self._hash_to_block.clear()
        return True

    def check_integrity(self) -> None:
        """Raise RuntimeError naming the first broken invariant of ref counts, queue or hash map."""
        queued = self.free_queue.check_links()
        for block_id in queued:
            if not 0 <= block_id < self.num_blocks:
                raise RuntimeError(f"free queue holds foreign block id {block_id}")
        for block in self.blocks:
            self._check_block(block, block.block_id in queued)
        for block_hash, block in self._hash_to_block.items():
            if block.block_hash != block_hash:
                raise RuntimeError(f"hash map entry points at {block!r} with another hash")

    def _check_block(self, block: KVBlock, is_queued: bool) -> None:
        if block.ref_cnt < 0:
            raise RuntimeError(f"negative ref count on {block!r}")
        if is_queued and (block.prev_free is None or block.next_free is None):
            raise RuntimeError(f"free queue holds a stand-in for {block!r}")
        if is_queued and block.ref_cnt != 0:
            raise RuntimeError(f"{block!r} is both free and referenced")
        if not is_queued and block.ref_cnt == 0:
            raise RuntimeError(f"{block!r} is unreferenced but not in the free queue")
        if not is_queued and (block.prev_free is not None or block.next_free is not None):
            raise RuntimeError(f"{block!r} has stale free-queue links")
        if block.block_hash is not None and self._hash_to_block.get(block.block_hash) is not block:
            raise RuntimeError(f"{block!r} carries a hash missing from the hash map")

    def _evict(self, block: KVBlock) -> None:
        if block.block_hash is None:
            return
        if self._hash_to_block.get(block.block_hash) is block:
            del self._hash_to_block[block.block_hash]
        block.block_hash = None
