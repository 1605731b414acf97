"""Decode steps replayed from CUDA graphs, one graph per padded batch size.

A decode step of a small model is mostly host work: ~15 kernel launches per layer, each a few
microseconds of Python and driver time, against microseconds of GPU work. A captured graph
replays every kernel of the step (embedding, layers, final norm, LM head) in one launch.

The graph reads its inputs from tensors it was captured with, so each step copies its metadata
into those static buffers; a batch of ``n`` sequences runs the smallest captured size ``>= n``
with the rows past ``n`` padded:

    rows        0 .......... n-1 | n ............ size-1
    slot        real slots       | -1 (the KV write skips them)
    seq_len     real lengths     | 1 (attend to one stale slot; the output is dropped)
    block table real tables      | whatever the row held last (valid block ids)

Only backends whose ``cuda_graph_safe`` is set (no host reads of device values) are captured;
the caller falls back to eager steps for prefill, for larger batches and on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .attention_metadata import AttentionMetadata

KVCache = tuple[torch.Tensor, torch.Tensor]


def capture_sizes(max_num_seqs: int) -> list[int]:
    """Padded batch sizes to capture: 1, 2, 4, 8, then every multiple of 8 up to the limit."""
    if max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
    sizes = [s for s in (1, 2, 4) if s < max_num_seqs]
    sizes += list(range(8, max_num_seqs, 8))
    return sizes + [max_num_seqs]


def padded_size(sizes: Sequence[int], num_seqs: int) -> int | None:
    """The smallest captured size that holds ``num_seqs`` rows, or None when none does."""
    for size in sizes:
        if size >= num_seqs:
            return size
    return None


class DecodeGraphs:
    """Captured decode steps of a whole model (first and last stage) on one CUDA device."""

    def __init__(
        self,
        stage: torch.nn.Module,
        kv_caches: list[KVCache],
        block_size: int,
        max_model_len: int,
        max_num_seqs: int,
        capture: bool = True,
    ) -> None:
        """``capture=False`` runs the same padded static-buffer steps eagerly (any device):
        the tests check the padding and the staging on the CPU that way."""
        device = kv_caches[0][0].device
        self.stage, self.kv_caches, self.block_size = stage, kv_caches, block_size
        self.sizes = capture_sizes(max_num_seqs)
        rows, width = self.sizes[-1], -(-max_model_len // block_size)
        self.width = width
        self.input_ids = torch.zeros(rows, dtype=torch.int64, device=device)
        self.positions = torch.zeros(rows, dtype=torch.int64, device=device)
        self.slots = torch.full((rows,), -1, dtype=torch.int64, device=device)
        self.seq_lens = torch.ones(rows, dtype=torch.int32, device=device)
        self.tables = torch.zeros(rows, width, dtype=torch.int32, device=device)
        self.starts = torch.arange(rows + 1, dtype=torch.int32, device=device)
        # One pinned host row per step: ids | positions | slots | seq_lens | tables, one copy.
        self._host = torch.zeros(rows * (4 + width), dtype=torch.int64)
        if device.type == "cuda":
            self._host = self._host.pin_memory()
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}  # [size, vocab] fp32, written by each replay
        self.replays = 0
        if capture:
            self._capture_all()

    def _meta(self, size: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slots[:size],
            block_tables=self.tables[:size],
            seq_lens=self.seq_lens[:size],
            query_start_loc=self.starts[: size + 1],
            is_decode=True,
        )

    def _forward(self, size: int) -> torch.Tensor:  # [size, vocab] fp32
        meta = self._meta(size)
        hidden = self.stage(self.input_ids[:size], self.positions[:size], self.kv_caches, meta)
        logits: torch.Tensor = self.stage.compute_logits(hidden)  # type: ignore[operator]
        return logits

    @torch.inference_mode()
    def _capture_all(self) -> None:
        pool = None
        # Largest first: the smaller graphs reuse the largest one's memory pool.
        for size in reversed(self.sizes):
            side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up: compiles kernels outside the capture
                self._forward(size)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.logits[size] = self._forward(size)
            pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize()

    def can_run(self, num_seqs: int, table_width: int) -> bool:
        return padded_size(self.sizes, num_seqs) is not None and table_width <= self.width

    @torch.inference_mode()
    def run(
        self,
        token_ids: list[int],  # [n] the last token of each sequence
        positions: list[int],  # [n] its position
        block_tables: list[list[int]],  # n tables, each <= width blocks
    ) -> torch.Tensor:  # [n, vocab] fp32 logits
        n = len(token_ids)
        size = padded_size(self.sizes, n)
        if size is None:
            raise ValueError(f"decode graphs: {n} sequences exceed the largest size {self.sizes}")
        width, bs = self.width, self.block_size
        host = self._host
        host[:n] = torch.tensor(token_ids, dtype=torch.int64)
        pos = torch.tensor(positions, dtype=torch.int64)
        host[size : size + n] = pos
        slots = [table[p // bs] * bs + p % bs for table, p in zip(block_tables, positions)]
        host[2 * size : 2 * size + n] = torch.tensor(slots, dtype=torch.int64)
        host[3 * size : 3 * size + n] = pos + 1
        flat = [b for table in block_tables for b in table + [0] * (width - len(table))]
        host[4 * size : 4 * size + n * width] = torch.tensor(flat, dtype=torch.int64)
        # Padding rows: no KV write, one token of context.
        host[n:size] = 0
        host[size + n : 2 * size] = 0
        host[2 * size + n : 3 * size] = -1
        host[3 * size + n : 4 * size] = 1
        # A blocking copy: the pinned buffer is rewritten by the next step.
        staged = host[: 4 * size + n * width].to(self.input_ids.device)
        self.input_ids[:size].copy_(staged[:size])
        self.positions[:size].copy_(staged[size : 2 * size])
        self.slots[:size].copy_(staged[2 * size : 3 * size])
        self.seq_lens[:size].copy_(staged[3 * size : 4 * size])
        self.tables[:n].copy_(staged[4 * size :].view(n, width))
        self.replays += 1
        graph = self.graphs.get(size)
        if graph is None:  # capture=False
            return self._forward(size)[:n]
        graph.replay()
        return self.logits[size][:n].clone()
