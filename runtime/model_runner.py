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
from .cuda_graphs import DecodeGraphs
from .scheduler import SchedulerOutput
from .sequence import Sequence


@dataclass
class StepInputs:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    meta: AttentionMetadata
    logits_indices: torch.Tensor  # [S] int64, packed index of each sampled sequence's last token
    sampled_rows: list[int]  # which items (in input order) produce logits


@dataclass
class SeqSlice:
    """One sequence's part of a step: its tokens [begin, end) and its block table."""

    token_ids: list[int]  # the tokens at positions [begin, end)
    begin: int
    end: int
    block_table: list[int]
    sample: bool


def batch_inputs(items: list[SeqSlice], block_size: int, device: torch.device) -> StepInputs:
    """Pack sequences back to back into the model's inputs and the attention metadata."""
    ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    seq_lens: list[int] = []
    starts = [0]
    logits_indices: list[int] = []
    sampled_rows: list[int] = []
    width = max(len(item.block_table) for item in items)
    tables: list[list[int]] = []  # padded with block 0 (entries past a table are ignored)
    for row, item in enumerate(items):
        ids += item.token_ids
        positions += range(item.begin, item.end)
        table = item.block_table
        slots += [
            table[p // block_size] * block_size + p % block_size
            for p in range(item.begin, item.end)
        ]
        seq_lens.append(item.end)
        starts.append(starts[-1] + item.end - item.begin)
        tables.append(table + [0] * (width - len(table)))
        if item.sample:
            logits_indices.append(starts[-1] - 1)
            sampled_rows.append(row)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        block_tables=torch.tensor(tables, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        is_decode=all(item.end - item.begin == 1 for item in items),
    )
    return StepInputs(
        torch.tensor(ids, dtype=torch.int64, device=device),
        torch.tensor(positions, dtype=torch.int64, device=device),
        meta,
        torch.tensor(logits_indices, dtype=torch.int64, device=device),
        sampled_rows,
    )


class ModelRunner:
    def __init__(
        self,
        stage: torch.nn.Module,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        block_size: int,
        device: torch.device,
        graphs: DecodeGraphs | None = None,
    ) -> None:
        self.stage = stage
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = device
        self.graphs = graphs
        """Captured decode steps (CUDA only); None runs every step eagerly."""

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
        graphs = self.graphs
        if (
            graphs is not None
            and _is_decode(out)
            and graphs.can_run(
                len(out.scheduled), max(len(seq.block_table) for seq, _ in out.scheduled)
            )
        ):
            seqs = [seq for seq, _ in out.scheduled]
            replayed = graphs.run(
                [seq.all_token_ids[-1] for seq in seqs],
                [seq.num_computed_tokens for seq in seqs],
                [seq.block_table for seq in seqs],
            )
            return replayed, seqs
        items = [
            SeqSlice(
                seq.all_token_ids[seq.num_computed_tokens : seq.num_computed_tokens + n],
                seq.num_computed_tokens,
                seq.num_computed_tokens + n,
                seq.block_table,
                seq.num_computed_tokens + n == seq.num_tokens,
            )
            for seq, n in out.scheduled
        ]
        step = batch_inputs(items, self.block_size, self.device)
        hidden = self.stage(step.input_ids, step.positions, self.kv_caches, step.meta)
        if not step.sampled_rows:
            return None, []
        sampled = [out.scheduled[row][0] for row in step.sampled_rows]
        # Every token samples (a decode step): the rows are already in order, skip the gather.
        rows = hidden if len(sampled) == hidden.shape[0] else hidden[step.logits_indices]
        logits: torch.Tensor = self.stage.compute_logits(rows)  # type: ignore[operator]
        return logits, sampled


def _is_decode(out: SchedulerOutput) -> bool:
    """Every scheduled sequence computes exactly its one last token (so every one samples)."""
    return all(n == 1 and seq.num_computed_tokens + 1 == seq.num_tokens for seq, n in out.scheduled)
