"""A node's time per pass outside its layers, measured through the runtime's own node code.

    prompt_ms, decode_ms = measure_pass_ms(576, prompt_tokens=[64, 2048], decode_batches=[1, 32])

Besides running its layers, a node (runtime/node.py) receives a Forward over ZeroMQ, decodes it,
admits every sequence (KV blocks, prefix-cache bookkeeping), builds the batch, copies hidden
states in and out of wire buffers, and encodes and sends what goes on. For a small model on a CPU
that is a measurable share of a pass. Here a real `StageWorker` runs over a stand-in stage whose
forward costs nothing (zeros of the right shape), between two real `Endpoint`s on ipc:// sockets;
the time from taking a delivered message off the socket to having sent the next one on is the
pass time. The node is timed as a middle stage (hidden states in and out: the most work; a
first or last stage moves a little less). Sampling's cost is the LM head's table, not this one.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import torch

from .messages import Forward, SeqWork
from .node import StageWorker
from .transport import Endpoint
from .wire import to_wire

BLOCK_SIZE = 16


class _FreeStage:
    """A stage [start, end) whose forward costs nothing: zeros of the hidden size per token."""

    def __init__(self, hidden_size: int, dtype: torch.dtype) -> None:
        self.start, self.end, self.hidden_size, self.dtype = 1, 2, hidden_size, dtype

    def allocate_kv_cache(self, num_blocks: int, block_size: int, device: Any = None) -> list[Any]:
        return []

    def __call__(self, x: Any, positions: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.zeros(len(positions), self.hidden_size, dtype=self.dtype)


class _Bench:
    """An upstream endpoint, the node under test and a downstream endpoint."""

    def __init__(self, hidden_size: int, dtype: torch.dtype, folder: str, num_blocks: int) -> None:
        self.hidden_size, self.dtype = hidden_size, dtype
        self.worker = StageWorker(
            "node", _FreeStage(hidden_size, dtype), num_blocks, BLOCK_SIZE, torch.device("cpu")
        )
        self.up = Endpoint(f"ipc://{folder}/up.sock")
        self.node = Endpoint(f"ipc://{folder}/node.sock")
        self.down = Endpoint(f"ipc://{folder}/down.sock")
        self.ids = itertools.count()

    def close(self) -> None:
        for endpoint in (self.up, self.node, self.down):
            endpoint.close()

    def one_pass(self, work: list[SeqWork]) -> float:
        """Seconds the node spends on this pass: receive, run (free layers), send on."""
        tokens = sum(w.num_tokens for w in work)
        hidden = to_wire(torch.randn(tokens, self.hidden_size).to(self.dtype))
        self.up.send(self.node.address, Forward(next(self.ids), work, hidden))
        self.node.pull.poll(10_000)  # delivered before the clock starts
        started = time.perf_counter()
        msg = self.node.recv(0.0)
        assert isinstance(msg, Forward)
        outgoing, _ = self.worker.forward(msg)
        for _, forward in outgoing:
            self.node.send(self.down.address, forward)
        seconds = time.perf_counter() - started
        for _ in outgoing:
            self.down.recv(10.0)
        return seconds


def _work(ids: list[str], start: int, lens: list[int]) -> list[SeqWork]:
    """One SeqWork per id: tokens [start, start + n) of it, on a route up -> node -> down; the
    sampling parameters travel with a first pass, as the coordinator sends them."""
    params = {"temperature": 0.0} if start == 0 else None
    return [
        SeqWork(i, start, n, [(start + j) % 30000 + 3 for j in range(n)],
                ["up", "node", "down"], 1, True, params)
        for i, n in zip(ids, lens)
    ]  # fmt: skip


def _statistic(samples: list[float], statistic: str) -> float:
    return (min(samples) if statistic == "min" else statistics.median(samples)) * 1e3


def measure_pass_ms(
    hidden_size: int,
    *,
    prompt_tokens: Sequence[int],
    decode_batches: Sequence[int],
    prompt_seq_tokens: int,
    context_tokens: int,
    dtype: torch.dtype = torch.float32,
    min_time_s: float = 0.2,
    max_runs: int = 20,
    statistic: str = "median",
) -> tuple[dict[int, float], dict[int, float]]:
    """({prompt tokens: ms}, {decode sequences: ms}) per pass outside the layers (module doc).

    A prompt batch of N tokens is made of prompts of `prompt_seq_tokens` (the last shorter);
    decode sequences hold about `context_tokens` each; hidden states travel in `dtype`. Each
    case runs at least 3 times and for at least `min_time_s`, after one warm-up pass."""
    largest = max([*prompt_tokens, 1]) + max([*decode_batches, 1]) * (context_tokens + max_runs + 2)
    num_blocks = 2 * (largest // BLOCK_SIZE + max([*decode_batches, 1]) + 2)
    with tempfile.TemporaryDirectory(prefix="helix-pass-") as folder:
        bench = _Bench(hidden_size, dtype, folder, num_blocks)
        try:
            prompt = {n: _prompt_ms(bench, n, prompt_seq_tokens, min_time_s, max_runs, statistic)
                      for n in prompt_tokens}  # fmt: skip
            decode = {n: _decode_ms(bench, n, context_tokens, min_time_s, max_runs, statistic)
                      for n in decode_batches}  # fmt: skip
        finally:
            bench.close()
    return prompt, decode


def _runs(min_time_s: float, max_runs: int) -> Any:
    """Run indices: warm-up (0), then at least 3 and at least `min_time_s`, at most max_runs."""
    started = time.perf_counter()
    for run in itertools.count():
        if run > 3 and (run > max_runs or time.perf_counter() - started >= min_time_s):
            return
        yield run


def _prompt_ms(
    bench: _Bench, tokens: int, seq_tokens: int, min_time_s: float, max_runs: int, statistic: str
) -> float:
    samples = []
    lens = [seq_tokens] * (tokens // seq_tokens) + (
        [tokens % seq_tokens] if tokens % seq_tokens else []
    )
    for run in _runs(min_time_s, max_runs):
        work = _work([f"p{tokens}-{run}-{i}" for i in range(len(lens))], 0, lens)
        seconds = bench.one_pass(work)
        bench.worker.release([w.request_id for w in work])
        if run:
            samples.append(seconds)
    return _statistic(samples, statistic)


def _decode_ms(
    bench: _Bench, batch: int, context: int, min_time_s: float, max_runs: int, statistic: str
) -> float:
    ids = [f"d{batch}-{i}" for i in range(batch)]
    bench.one_pass(_work(ids, 0, [context] * batch))
    samples = []
    for run in _runs(min_time_s, max_runs):
        seconds = bench.one_pass(_work(ids, context + run, [1] * batch))
        if run:
            samples.append(seconds)
    bench.worker.release(ids)
    return _statistic(samples, statistic)
