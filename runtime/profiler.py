"""Measure this machine's per-layer prompt and decode times with the real engine model.

    timings = measure_layer_times("smollm2-135m", device="cpu", batch_tokens=(1, 8, 32))
    timings.prompt_layer_ms[32], timings.decode_layer_ms[8]

For a few layer counts k, ``load_stage(model, 0, k)`` builds stage [0, k) and we time its forward
pass on (a) a prompt batch of N tokens and (b) N sequences decoding one token each after a
context of ``context_tokens``. The slope of time against k (least squares) is the per-layer time:
it leaves out the embedding, which every stage [0, k) pays once (the slope is kept within half
and all of the largest stage's time per layer). With one layer count the time is divided by k.
Times are the fastest of repeated runs; each table is made non-decreasing in N.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .attention_metadata import AttentionMetadata
from .loader import load_stage
from .model import KVCache, LlamaStage

BLOCK_SIZE = 16
MAX_PROMPT_SEQ = 512
"""Longer prompt batches are split into sequences of at most this many tokens."""
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


def device_kind(device: str) -> str:
    if device == "cpu":
        return "cpu"
    return torch.cuda.get_device_name(torch.device(device)).strip().replace(" ", "-")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ms(run: Callable[[], object], device: torch.device, min_s: float, max_runs: int) -> float:
    """Fastest wall time of `run` after one warm-up call."""
    run()
    _sync(device)
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < max_runs and (len(samples) < 3 or time.perf_counter() - started < min_s):
        t0 = time.perf_counter()
        run()
        _sync(device)
        samples.append((time.perf_counter() - t0) * 1e3)
    return min(samples)  # the least disturbed run (as timeit advises)


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
    min_s: float,
    max_runs: int,
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

    return _time_ms(run, device, min_s, max_runs)


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
    out, best = {}, _FLOOR_MS
    for n in sorted(table):
        best = max(best, table[n])
        out[n] = round(best, 6)
    return out


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
) -> LayerTimings:
    """Time prompt and decode batches of each size in `batch_tokens` (see module docstring)."""
    if not batch_tokens or any(n < 1 for n in batch_tokens):
        raise ValueError(f"batch_tokens: need positive sizes, got {list(batch_tokens)}")
    if context_tokens < 1:
        raise ValueError(f"context_tokens must be >= 1, got {context_tokens}")
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"dtype: unknown torch dtype {dtype!r}")
    dev = torch.device(device)
    sizes = sorted(set(batch_tokens))
    prompt: dict[int, list[float]] = {n: [] for n in sizes}
    decode: dict[int, list[float]] = {n: [] for n in sizes}
    counts: list[int] = []
    num_layers = 0
    context = context_tokens
    for k in sorted(set(layer_counts or (1, 2, 4))):
        if k < 1 or (num_layers and k > num_layers):
            continue
        stage, config = load_stage(model, 0, k, dtype=torch_dtype, device=dev)
        num_layers = config.num_layers
        counts.append(k)
        context = min(context_tokens, config.max_position_embeddings - 1)
        longest = min(MAX_PROMPT_SEQ, config.max_position_embeddings)
        for n in sizes:
            lens = [longest] * (n // longest) + ([n % longest] if n % longest else [])
            prompt[n].append(_forward_ms(stage, lens, lens, dev, min_time_s, max_runs))
            decode[n].append(
                _forward_ms(stage, [context + 1] * n, [1] * n, dev, min_time_s, max_runs)
            )
        del stage
    if not counts:
        raise ValueError(f"layer_counts: none of {list(layer_counts or ())} fits {model}")
    return LayerTimings(
        kind=device_kind(device),
        model=str(model),
        dtype=dtype,
        num_layers=num_layers,
        context_tokens=context,
        layer_counts=tuple(counts),
        prompt_layer_ms=_monotone({n: _slope(counts, prompt[n]) for n in sizes}),
        decode_layer_ms=_monotone({n: _slope(counts, decode[n]) for n in sizes}),
    )
