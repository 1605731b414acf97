"""Batch -> tensors -> model -> logits. Owns the node's KV cache arrays.

For each scheduled sequence the step covers the token positions [num_computed, num_computed + n):

    context   0 ........ num_computed-1 | num_computed ...... num_computed+n-1
              (already in the KV cache)  | this step's queries (KV written now)

Only sequences whose step reaches their last known token produce logits (a chunk in the middle of
a prompt does not).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention_metadata import AttentionMetadata
from .scheduler import SchedulerOutput
from .sequence import Sequence


@dataclass
class StepInputs:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    meta: AttentionMetadata
    logits_indices: torch.Tensor  # [S] int64, packed index of each sampled sequence's last token
    sampled: list[Sequence]  # the S sequences that get a token this step


class ModelRunner:
    def __init__(
        self,
        stage: torch.nn.Module,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        block_size: int,
        device: torch.device,
    ) -> None:
        self.stage = stage
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = device

    def prepare(self, out: SchedulerOutput) -> StepInputs:
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        seq_lens: list[int] = []
        starts = [0]
        logits_indices: list[int] = []
        sampled: list[Sequence] = []
        width = max(len(seq.block_table) for seq, _ in out.scheduled)
        tables = torch.zeros((len(out.scheduled), width), dtype=torch.int32)
        for row, (seq, num_new) in enumerate(out.scheduled):
            begin, end = seq.num_computed_tokens, seq.num_computed_tokens + num_new
            tokens = seq.all_token_ids
            ids += tokens[begin:end]
            positions += range(begin, end)
            table = seq.block_table
            slots += [
                table[p // self.block_size] * self.block_size + p % self.block_size
                for p in range(begin, end)
            ]
            seq_lens.append(end)
            starts.append(starts[-1] + num_new)
            tables[row, : len(table)] = torch.tensor(table, dtype=torch.int32)
            if end == seq.num_tokens:
                logits_indices.append(starts[-1] - 1)
                sampled.append(seq)
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            block_tables=tables.to(dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            query_start_loc=torch.tensor(starts, dtype=torch.int32, device=dev),
            is_decode=all(n == 1 for _, n in out.scheduled),
        )
        return StepInputs(
            torch.tensor(ids, dtype=torch.int64, device=dev),
            torch.tensor(positions, dtype=torch.int64, device=dev),
            meta,
            torch.tensor(logits_indices, dtype=torch.int64, device=dev),
            sampled,
        )

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Duplicate KV blocks (src -> dst) in every layer, for forked sequences."""
        if not copies:
            return
        src = torch.tensor([s for s, _ in copies], device=self.device)
        dst = torch.tensor([d for _, d in copies], device=self.device)
        for k_cache, v_cache in self.kv_caches:
            k_cache[dst] = k_cache[src]
            v_cache[dst] = v_cache[src]

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> tuple[torch.Tensor | None, list[Sequence]]:
        """Run one step; returns logits [S, vocab] for the sequences that sample, and them."""
        self.copy_blocks(out.block_copies)
        if not out.scheduled:
            return None, []
        step = self.prepare(out)
        hidden = self.stage(step.input_ids, step.positions, self.kv_caches, step.meta)
        if not step.sampled:
            return None, []
        return self.stage.compute_logits(hidden[step.logits_indices]), step.sampled
