"""The paged-attention backend contract shared by every kernel module.

Shapes (one transformer layer):

    k_cache, v_cache  [num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping      [T] int64, slot = block_id * block_size + offset, -1 = skip the token
    block_tables      [num_seqs, max_blocks_per_seq] int32; entries past a sequence's last
                      block are ignored (any value)
    query_start_loc   [num_seqs + 1] int32, cumulative query counts (starts at 0)
    seq_lens          [num_seqs] int32, context length INCLUDING the new tokens

NOTE(kernels): prefill queries of sequence b are the LAST q_len_b positions of its context,
so a cached prefix and chunked prefill are the same case:

    context positions   0 ........ seq_len-q_len-1 | seq_len-q_len ....... seq_len-1
                        (already in the cache)      | queries of this step (also in the cache)

Query i of the step sits at position p = seq_len - q_len + i and attends to keys 0..p.

This module imports neither torch nor jax: the registry must stay cheap to import.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class AttentionBackend(ABC):
    """Paged attention over one layer's KV cache.

    Inputs are torch tensors on one device. Only ``write_kv`` mutates anything (the two cache
    tensors, in place); ``prefill`` and ``decode`` return a new tensor and never touch the cache.
    Bad shapes, dtypes or devices raise ``ValueError`` naming the argument. Backends hold no
    per-call state, so one instance may serve every layer.
    """

    name: str = "abstract"
    cuda_graph_safe: bool = False
    """``decode`` and ``write_kv`` never read device values on the host (no sync), so a decode
    step can be captured in a CUDA graph and replayed with new metadata in the same tensors."""

    @abstractmethod
    def write_kv(
        self,
        key: torch.Tensor,  # [T, Hkv, D]
        value: torch.Tensor,  # [T, Hkv, D]
        k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D], mutated in place
        v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D], mutated in place
        slot_mapping: torch.Tensor,  # [T] int64, -1 = skip
    ) -> None:
        """Store token t's key/value at ``slot_mapping[t]``; skip slots < 0."""

    @abstractmethod
    def prefill(
        self,
        q: torch.Tensor,  # [T, H, D], sequences packed back to back
        k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
        v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
        block_tables: torch.Tensor,  # [B, M] int32
        query_start_loc: torch.Tensor,  # [B + 1] int32
        seq_lens: torch.Tensor,  # [B] int32
        scale: float,
    ) -> torch.Tensor:  # [T, H, D], dtype of q
        """Causal attention of each sequence's queries over its whole cached context."""

    @abstractmethod
    def decode(
        self,
        q: torch.Tensor,  # [B, H, D], one query per sequence at position seq_lens[b] - 1
        k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
        v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
        block_tables: torch.Tensor,  # [B, M] int32
        seq_lens: torch.Tensor,  # [B] int32
        scale: float,
    ) -> torch.Tensor:  # [B, H, D], dtype of q
        """Attention of one new query per sequence over its first ``seq_lens[b]`` tokens."""
