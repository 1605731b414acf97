"""Per-step paged-attention inputs that every layer of a stage shares.

The model runner builds one ``AttentionMetadata`` per forward pass; the model hands its fields,
unchanged, to the ``helix.kernels`` backend of each layer (see ``kernels/backend.py`` for the
exact contract). Token ``t`` of the packed batch belongs to sequence ``b`` when
``query_start_loc[b] <= t < query_start_loc[b + 1]``:

    tokens      | seq 0: q_len_0 tokens | seq 1: q_len_1 tokens | ... |
    query_start_loc  0                  q_len_0          q_len_0 + q_len_1 ...

This module imports torch only for type checking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class AttentionMetadata:
    """Where each new token's K/V goes and which cache blocks each sequence reads."""

    slot_mapping: torch.Tensor  # [T] int64, block_id * block_size + offset; -1 = do not store
    block_tables: torch.Tensor  # [B, M] int32, physical block ids of each sequence
    seq_lens: torch.Tensor  # [B] int32, context length INCLUDING this step's tokens
    query_start_loc: torch.Tensor  # [B + 1] int32, cumulative query counts from 0
    is_decode: bool
    """Every sequence has exactly one query (T == B): layers call ``backend.decode``."""

    @property
    def num_seqs(self) -> int:
        return int(self.seq_lens.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.slot_mapping.shape[0])
