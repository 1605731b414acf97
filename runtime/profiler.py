"""Measure this machine's per-layer prompt and decode times with the real engine model.

    timings = measure_layer_times("smollm2-135m", device="cpu", batch_tokens=(1, 8, 32))
    timings.prompt_layer_ms[32], timings.decode_layer_ms[8]

For a few layer counts k, ``load_stage(model, 0, k)`` builds stage [0, k) and we time its forward
pass on (a) a prompt batch of N tokens and (b) N sequences decoding one token each after a
context of ``context_tokens``. The slope of time against k (least squares) is the per-layer time:
it leaves out the embedding, which every stage [0, k) pays once (the slope is kept within half
and all of the largest stage's time per layer). With one layer count the time is divided by k.
Times are the median of repeated runs (`statistic="min"`: the fastest): a serving node runs its
passes back to back, and on a CPU its typical pass is measurably slower than its luckiest one
(15-20 % for SmolLM2 on the 2-core test machine). Each table is made non-decreasing in N.

The last stage of a pipeline also runs the LM head (final norm, logits over the vocabulary) and
greedy sampling for every sequence it samples: ``head_ms[N]`` times that for N rows on stage
[L-1, L) (for a small model it weighs as much as several layers). ``prompt_pass_ms[N]`` and
``decode_pass_ms[N]`` time what every node of the sharded runtime does per pass beside its layers
(ZeroMQ message in and out, codec, batch set-up, KV bookkeeping; `pass_profile.py`), through the
node's own code. ``threads`` pins torch's CPU threads while timing, to profile with the share of
cores a node will really get; ``co_runners`` keeps that many other processes running decode
passes meanwhile, as the other nodes of a local cluster on the same machine do (`co_runners.py`).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from .attention_metadata import AttentionMetadata
from .co_runners import CoRunners
from .loader import load_stage
from .model import KVCache, LlamaStage
from .sampler import prepare, sample
from .sampling_params import SamplingParams

BLOCK_SIZE = 16
MAX_PROMPT_SEQ = 512
"""Longer prompt batches are split into sequences of at most this many tokens (by default)."""
_FLOOR_MS = 1e-4
"""Smallest per-layer time reported (a noisy slope on a tiny model can come out <= 0)."""


@dataclass(frozen=True)
class LayerTimings:
    """Per-layer milliseconds measured on one device for one model and dtype."""

    kind: str
    """GPU kind the profile is for: `cpu`, or the CUDA device name with spaces as dashes."""
    model: str
    dtype: str
    num_layers: int
    context_tokens: int
    layer_counts: tuple[int, ...]
    prompt_layer_ms: dict[int, float]
    """Batch of N prompt tokens -> ms per layer."""
    decode_layer_ms: dict[int, float]
    """N sequences, one token each -> ms per layer."""
    head_ms: dict[int, float] | None = None
    """N sampled sequences -> ms of final norm, LM head and greedy sampling (last stage only)."""
    threads: int | None = None
    """torch CPU threads while timing (None: torch's default)."""
    prompt_pass_ms: dict[int, float] | None = None
    """Prompt pass of N tokens -> ms a node spends on it outside its layers (messages, set-up)."""
    decode_pass_ms: dict[int, float] | None = None
    """Decode pass of N sequences -> ms a node spends on it outside its layers."""
    co_runners: int = 0
    """Other processes running decode passes on this machine while timing (local neighbours)."""
    statistic: str = "median"
    """Which of the repeated runs' times: `median` or `min`."""


def device_kind(device: str) -> str:
    if device == "cpu":
        return "cpu"
    return torch.cuda.get_device_name(torch.device(device)).strip().replace(" ", "-")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


STATISTICS = ("median", "min")


@dataclass(frozen=True)
class _Budget:
    min_s: float
    """Time each case for at least this long (and at least 3 runs)."""
    max_runs: int
    statistic: str
    """`median` (a node serving runs its passes back to back, disturbances and all) or `min`."""


def _time_ms(run: Callable[[], object], device: torch.device, budget: _Budget) -> float:
    """Median (or fastest) wall time of `run` after one warm-up call."""
    run()
    _sync(device)
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < budget.max_runs and (
        len(samples) < 3 or time.perf_counter() - started < budget.min_s
    ):
        t0 = time.perf_counter()
        run()
        _sync(device)
        samples.append((time.perf_counter() - t0) * 1e3)
    return min(samples) if budget.statistic == "min" else statistics.median(samples)


def _batch(
    seq_lens: list[int],  # tokens already cached + new tokens, per sequence
    new_tokens: list[int],  # new tokens per sequence
    device: torch.device,
) -> tuple[torch.Tensor, AttentionMetadata, int]:
    """Positions, metadata and block count for sequences laid out on consecutive blocks."""
    blocks_per_seq = [math.ceil(n / BLOCK_SIZE) for n in seq_lens]
    width = max(blocks_per_seq)
    tables = torch.zeros(len(seq_lens), width, dtype=torch.int32)  # [B, M]
    positions: list[int] = []
    slots: list[int] = []
    first = 0
    for b, (total, new) in enumerate(zip(seq_lens, new_tokens)):
        table = list(range(first, first + blocks_per_seq[b]))
        tables[b, : len(table)] = torch.tensor(table, dtype=torch.int32)
        for pos in range(total - new, total):
            positions.append(pos)
            slots.append(table[pos // BLOCK_SIZE] * BLOCK_SIZE + pos % BLOCK_SIZE)
        first += blocks_per_seq[b]
    starts = [0]
    for new in new_tokens:
        starts.append(starts[-1] + new)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),  # [T]
        block_tables=tables.to(device),  # [B, M]
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),  # [B]
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),  # [B + 1]
        is_decode=all(n == 1 for n in new_tokens) and any(t > 1 for t in seq_lens),
    )
    return torch.tensor(positions, dtype=torch.int64, device=device), meta, first


def _forward_ms(
    stage: LlamaStage,
    seq_lens: list[int],
    new_tokens: list[int],
    device: torch.device,
    budget: _Budget,
) -> float:
    positions, meta, num_blocks = _batch(seq_lens, new_tokens, device)
    caches: list[KVCache] = stage.allocate_kv_cache(num_blocks, BLOCK_SIZE, device=device)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, stage.config.vocab_size, (len(positions),), generator=gen)  # [T]
    ids = ids.to(device)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            hidden: torch.Tensor = stage(ids, positions, caches, meta)  # [T, hidden]
        return hidden

    return _time_ms(run, device, budget)


def _head_ms(stage: LlamaStage, rows: int, device: torch.device, budget: _Budget) -> float:
    """Final norm + LM head + greedy sampling of `rows` hidden states (what the last node adds)."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, stage.config.hidden_size, generator=gen)  # [N, hidden]
    hidden = hidden.to(device, next(stage.parameters()).dtype)
    params = [SamplingParams(temperature=0)] * rows

    def run() -> object:
        with torch.inference_mode():
            return sample(stage.compute_logits(hidden), prepare(params, [None] * rows))

    return _time_ms(run, device, budget)


def _slope(counts: Sequence[int], times: Sequence[float]) -> float:
    """Least-squares ms per layer, kept within [0.5, 1] x the largest stage's time per layer
    (its fixed part, the embedding and call overhead, is small; noise can make a slope of a tiny
    model's few layers anything)."""
    per_layer = times[-1] / counts[-1]
    if len(counts) == 1:
        return per_layer
    mean_k, mean_t = statistics.fmean(counts), statistics.fmean(times)
    num = sum((k - mean_k) * (t - mean_t) for k, t in zip(counts, times))
    den = sum((k - mean_k) ** 2 for k in counts)
    return min(per_layer, max(0.5 * per_layer, num / den))


def _monotone(table: dict[int, float]) -> dict[int, float]:
    """The closest non-decreasing table (more tokens never take less time): runs of cases that
    break the order are replaced by their mean (pool adjacent violators). A slow outlier at a
    small size (a first call on a GPU) so pulls its neighbours up only by its share, instead of
    setting the floor for every larger size."""
    blocks: list[list[float]] = []  # [sum, count] of pooled runs, means non-decreasing
    for n in sorted(table):
        blocks.append([max(table[n], _FLOOR_MS), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    means = [mean for total, count in blocks for mean in [total / count] * int(count)]
    return {n: round(mean, 6) for n, mean in zip(sorted(table), means)}


def measure_layer_times(
    model: str,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    batch_tokens: Sequence[int] = (1, 8, 32, 128, 512),
    context_tokens: int = 128,
    layer_counts: Sequence[int] | None = None,
    min_time_s: float = 0.2,
    max_runs: int = 20,
    statistic: str = "median",
    threads: int | None = None,
    prompt_seq_tokens: int = MAX_PROMPT_SEQ,
    head: bool = True,
    decode_batches: Sequence[int] | None = None,
    passes: bool = True,
    co_runners: int = 0,
) -> LayerTimings:
    """Time prompt and decode batches of each size in `batch_tokens` (see module docstring).

    `decode_batches`: decode (and head) batch sizes when they differ from `batch_tokens` (a
    decode batch as large as a prompt batch is rarely run). `prompt_seq_tokens`: a prompt batch
    of N tokens is made of sequences this long (the workload's prompt length; attention grows
    with it). `head`: also time the LM head; `passes`: also time a node's per-pass work beside
    its layers (host work, timed on the CPU with the model's hidden size and dtype).
    `co_runners`: time everything while this many other processes run decode passes of a stage
    as large as the largest timed one, with the same threads (`co_runners.py`: the other nodes
    of a local cluster on this machine)."""
    decode_sizes = sorted(set(batch_tokens if decode_batches is None else decode_batches))
    for name, sizes in (("batch_tokens", batch_tokens), ("decode_batches", decode_sizes)):
        if not sizes or any(n < 1 for n in sizes):
            raise ValueError(f"{name}: need positive sizes, got {list(sizes)}")
    if context_tokens < 1:
        raise ValueError(f"context_tokens must be >= 1, got {context_tokens}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    if prompt_seq_tokens < 1:
        raise ValueError(f"prompt_seq_tokens must be >= 1, got {prompt_seq_tokens}")
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"dtype: unknown torch dtype {dtype!r}")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    neighbours = CoRunners(
        co_runners,
        model,
        layers=max(layer_counts or (1, 2, 4)),
        threads=threads or before,
        batch=max(decode_sizes),
        context=context_tokens,
        dtype=dtype,
    )
    try:
        with neighbours:
            timings = _measure(
                model,
                torch.device(device),
                torch_dtype,
                sorted(set(batch_tokens)),
                decode_sizes,
                context_tokens,
                sorted(set(layer_counts or (1, 2, 4))),
                _Budget(min_time_s, max_runs, statistic),
                prompt_seq_tokens,
                head,
                passes,
            )
        return replace(
            timings, dtype=dtype, threads=threads, statistic=statistic, co_runners=co_runners
        )
    finally:
        torch.set_num_threads(before)


def _measure(
    model: str, dev: torch.device, torch_dtype: torch.dtype, sizes: list[int],
    decode_sizes: list[int], context_tokens: int, layer_counts: list[int],
    budget: _Budget, prompt_seq_tokens: int, head: bool, passes: bool,
) -> LayerTimings:  # fmt: skip
    prompt: dict[int, list[float]] = {n: [] for n in sizes}
    decode: dict[int, list[float]] = {n: [] for n in decode_sizes}
    counts: list[int] = []
    num_layers = 0
    context = context_tokens
    for k in layer_counts:
        if k < 1 or (num_layers and k > num_layers):
            continue
        stage, config = load_stage(model, 0, k, dtype=torch_dtype, device=dev)
        num_layers = config.num_layers
        counts.append(k)
        context = min(context_tokens, config.max_position_embeddings - 1)
        longest = min(prompt_seq_tokens, config.max_position_embeddings)
        for n in sizes:
            lens = [longest] * (n // longest) + ([n % longest] if n % longest else [])
            prompt[n].append(_forward_ms(stage, lens, lens, dev, budget))
        for n in decode_sizes:
            decode[n].append(_forward_ms(stage, [context + 1] * n, [1] * n, dev, budget))
        del stage
    if not counts:
        raise ValueError(f"layer_counts: none of {layer_counts} fits {model}")
    head_ms = None
    if head:
        last, _ = load_stage(model, num_layers - 1, num_layers, dtype=torch_dtype, device=dev)
        head_ms = {n: _head_ms(last, n, dev, budget) for n in decode_sizes}
        head_ms = _monotone(head_ms)
        del last
    pass_ms: tuple[dict[int, float] | None, ...] = (None, None)
    if passes:
        from .pass_profile import measure_pass_ms

        pass_ms = tuple(
            _monotone(table)
            for table in measure_pass_ms(
                config.hidden_size,
                prompt_tokens=sizes,
                decode_batches=decode_sizes,
                prompt_seq_tokens=min(prompt_seq_tokens, config.max_position_embeddings),
                context_tokens=context,
                dtype=torch_dtype,
                min_time_s=budget.min_s,
                max_runs=budget.max_runs,
                statistic=budget.statistic,
            )
        )
    return LayerTimings(
        kind=device_kind(str(dev)),
        model=str(model),
        dtype=str(torch_dtype).removeprefix("torch."),
        num_layers=num_layers,
        context_tokens=context,
        layer_counts=tuple(counts),
        prompt_layer_ms=_monotone({n: _slope(counts, prompt[n]) for n in sizes}),
        decode_layer_ms=_monotone({n: _slope(counts, decode[n]) for n in decode_sizes}),
        head_ms=head_ms,
        prompt_pass_ms=pass_ms[0],
        decode_pass_ms=pass_ms[1],
    )
