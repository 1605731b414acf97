"""Chained prefix-cache hashes of full KV blocks.

A block's hash covers its parent's hash, its token ids and any extra keys, so one hash names the
whole prefix up to and including that block. Only full blocks are hashed: a partial block can still
change. SHA-256 over a fixed byte encoding keeps hashes equal across processes and nodes, which
Python's salted `hash()` would not.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

BlockHash = bytes
"""32-byte SHA-256 digest naming a block and every block before it."""

ExtraKey = str | int | bytes
"""Extra data mixed into a block's hash (e.g. a tenant's `cache_salt`)."""

# NOTE(helix): a fixed, public root (not vLLM's random one) so that every pipeline node computes the
# same hash for the same prefix. Tenants that must not share hits set `cache_salt`.
NONE_HASH: BlockHash = hashlib.sha256(b"helix-serve/block-hash/root/v1").digest()


def hash_block_tokens(
    parent_hash: BlockHash | None,
    token_ids: Sequence[int],
    extra_keys: tuple[ExtraKey, ...] = (),
) -> BlockHash:
    """Hash one full block given its parent's hash (None for the first block)."""
    digest = hashlib.sha256(parent_hash if parent_hash is not None else NONE_HASH)
    digest.update(struct.pack(f">I{len(token_ids)}q", len(token_ids), *token_ids))
    digest.update(struct.pack(">I", len(extra_keys)))
    for key in extra_keys:
        digest.update(_encode_key(key))
    return digest.digest()


def hash_new_blocks(
    token_ids: Sequence[int],
    block_size: int,
    cache_salt: str | None,
    known_hashes: Sequence[BlockHash],
) -> list[BlockHash]:
    """Hashes of the full blocks of `token_ids` after the `len(known_hashes)` already hashed.

    The salt joins the first block only; chaining carries it into every later hash.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    new_hashes: list[BlockHash] = []
    parent = known_hashes[-1] if known_hashes else None
    for index in range(len(known_hashes), len(token_ids) // block_size):
        block_tokens = token_ids[index * block_size : (index + 1) * block_size]
        extra: tuple[ExtraKey, ...] = (cache_salt,) if index == 0 and cache_salt else ()
        parent = hash_block_tokens(parent, block_tokens, extra)
        new_hashes.append(parent)
    return new_hashes


def _encode_key(key: ExtraKey) -> bytes:
    # A type tag and a length prefix keep ("ab",) and ("a", "b") or 1 and "1" apart.
    if isinstance(key, bool) or not isinstance(key, (str, int, bytes)):
        raise TypeError(f"extra key must be str, int or bytes, got {type(key).__name__}")
    if isinstance(key, int):
        return b"i" + struct.pack(">q", key)
    payload = key.encode("utf-8") if isinstance(key, str) else key
    tag = b"s" if isinstance(key, str) else b"b"
    return tag + struct.pack(">I", len(payload)) + payload
