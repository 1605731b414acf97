"""What a simulation measures, and the result it returns.

Throughput and latency count only what completes inside the measured window
[warmup_s, warmup_s + duration_s] (or up to the last event, when the run drains earlier). The
timeline covers the whole run, warm-up included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .sim_engine import Simulator


@dataclass(frozen=True)
class LatencyStats:
    mean_s: float
    p50_s: float
    p99_s: float
    count: int

    @staticmethod
    def of(values: list[float], weights: list[int] | None = None) -> LatencyStats:
        """Weighted mean and percentiles (the first value whose cumulative weight reaches q).
        Vectorised: a 10-minute run of a large cluster records millions of decode steps."""
        import numpy as np

        if not values:
            return LatencyStats(math.nan, math.nan, math.nan, 0)
        v = np.asarray(values, dtype=np.float64)
        w = np.ones(len(values), dtype=np.int64) if weights is None else np.asarray(weights)
        total = int(w.sum())
        mean = math.fsum((v * w).tolist()) / total  # exactly rounded, in any order
        order = np.argsort(v, kind="stable")
        seen = np.cumsum(w[order])

        def pct(q: float) -> float:
            i = int(np.searchsorted(seen, q * total, side="left"))
            return float(v[order[min(i, len(order) - 1)]])

        return LatencyStats(mean, pct(0.5), pct(0.99), total)

    def to_dict(self) -> dict[str, float]:
        return {"mean": _r(self.mean_s), "p50": _r(self.p50_s), "p99": _r(self.p99_s),
                "count": self.count}  # fmt: skip


@dataclass(frozen=True)
class NodeStats:
    name: str
    gpu: str
    layers: tuple[int, int]
    utilisation: float
    """Busy share of the measured window."""
    kv_capacity_entries: int
    kv_mean_use: float
    """Time-averaged reserved share of KV over the window."""
    kv_peak_entries: int
    """Most token-layer entries ever reserved at once (whole run)."""
    iterations: int
    mean_decode_batch: float

    def to_dict(self) -> dict[str, Any]:
        cap = self.kv_capacity_entries
        return {
            "name": self.name,
            "gpu": self.gpu,
            "layers": list(self.layers),
            "utilisation": _r(self.utilisation),
            "kv_capacity_entries": cap,
            "kv_mean_use": _r(self.kv_mean_use),
            "kv_peak_use": _r(self.kv_peak_entries / cap) if cap else 0.0,
            "kv_peak_entries": self.kv_peak_entries,
            "iterations": self.iterations,
            "mean_decode_batch": _r(self.mean_decode_batch),
        }


@dataclass(frozen=True)
class SimResult:
    routing: str
    mode: str
    seed: int
    warmup_s: float
    window_s: float
    plan_throughput_tokens_per_s: float
    decode_tokens_per_s: float
    prompt_tokens_per_s: float
    prompt_latency: LatencyStats
    """Time to first token: arrival to the prompt's last token back at the coordinator."""
    decode_latency: LatencyStats
    """One decode step: coordinator -> route -> coordinator, per token."""
    num_admitted: int
    num_completed: int
    num_waiting: int
    """Requests still waiting for KV admission at the end."""
    num_dropped: int
    """Requests that fit no route even on an idle cluster."""
    nodes: tuple[NodeStats, ...]
    bin_s: float
    decode_timeline: tuple[float, ...]
    """Decode tokens/s per bin of `bin_s` seconds from t=0."""
    total_timeline: tuple[float, ...]
    wall_s: float = 0.0
    num_events: int = 0
    engine: str = ""
    """Which event loop ran: `native` or `python` (identical results; not in `to_dict`)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_tokens_per_s(self) -> float:
        return self.decode_tokens_per_s + self.prompt_tokens_per_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "routing": self.routing,
            "mode": self.mode,
            "seed": self.seed,
            "warmup_s": _r(self.warmup_s),
            "window_s": _r(self.window_s),
            "plan_throughput_tokens_per_s": _r(self.plan_throughput_tokens_per_s),
            "decode_tokens_per_s": _r(self.decode_tokens_per_s),
            "total_tokens_per_s": _r(self.total_tokens_per_s),
            "prompt_latency_s": self.prompt_latency.to_dict(),
            "decode_latency_s": self.decode_latency.to_dict(),
            "requests": {
                "admitted": self.num_admitted,
                "completed": self.num_completed,
                "waiting": self.num_waiting,
                "dropped": self.num_dropped,
            },
            "nodes": [node.to_dict() for node in self.nodes],
            "timeline": {
                "bin_s": _r(self.bin_s),
                "decode_tokens_per_s": [_r(v) for v in self.decode_timeline],
                "total_tokens_per_s": [_r(v) for v in self.total_timeline],
            },
            "num_events": self.num_events,
            **self.extra,
        }


def _r(value: float, digits: int = 4) -> float:
    return round(value, digits) if math.isfinite(value) else value


class Recorder:
    """Accumulates measurements while the simulation runs (window-aware)."""

    def __init__(self, window_start_s: float, window_end_s: float, bin_s: float):
        self.start, self.end, self.bin_s = window_start_s, window_end_s, bin_s
        num_bins = max(1, math.ceil(window_end_s / bin_s))
        self.decode_bins = [0] * num_bins
        self.prompt_bins = [0] * num_bins
        self.decode_tokens = 0
        self.prompt_tokens = 0
        self.ttft: list[float] = []
        self.step_latency: list[float] = []
        self.step_weight: list[int] = []

    def _bin(self, now: float) -> int:
        return min(int(now / self.bin_s), len(self.decode_bins) - 1)

    def decode_step(self, now: float, latency_s: float, num_tokens: int) -> None:
        bins = self.decode_bins
        index = int(now / self.bin_s)
        bins[index if index < len(bins) else len(bins) - 1] += num_tokens
        if self.start <= now <= self.end:
            self.decode_tokens += num_tokens
            self.step_latency.append(latency_s)
            self.step_weight.append(num_tokens)

    def first_token(self, now: float, ttft_s: float, prompt_tokens: int) -> None:
        self.prompt_bins[self._bin(now)] += prompt_tokens
        if self.start <= now <= self.end:
            self.prompt_tokens += prompt_tokens
            self.ttft.append(ttft_s)

    def overlap(self, t0: float, t1: float) -> float:
        """Length of [t0, t1] inside the window."""
        return max(0.0, min(t1, self.end) - max(t0, self.start))

    def timelines(self, last_s: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
        num_bins = max(1, min(len(self.decode_bins), math.ceil(last_s / self.bin_s)))
        decode = tuple(n / self.bin_s for n in self.decode_bins[:num_bins])
        total = tuple(
            (d + p) / self.bin_s
            for d, p in zip(self.decode_bins[:num_bins], self.prompt_bins[:num_bins])
        )
        return decode, total


def build_result(sim: Simulator, wall_s: float) -> SimResult:
    """Close the books on a finished run: window totals, per-node shares, latency stats."""
    rec, config = sim.rec, sim.config
    window_end = min(config.end_s, sim.last_s)
    window = max(0.0, window_end - config.warmup_s)
    node_stats = []
    for node in sim.nodes:
        busy = node.busy_s + (rec.overlap(node.iter_start, window_end) if node.busy else 0.0)
        area = node.kv_area + node.kv_used * rec.overlap(node.kv_last, window_end)
        cap = node.kv_capacity
        node_stats.append(
            NodeStats(
                name=node.name,
                gpu=node.gpu,
                layers=node.layers,
                utilisation=busy / window if window else 0.0,
                kv_capacity_entries=cap,
                kv_mean_use=area / (window * cap) if window and cap else 0.0,
                kv_peak_entries=node.kv_peak,
                iterations=node.iterations,
                mean_decode_batch=node.decode_seqs / max(1, node.iterations),
            )
        )
    decode_timeline, total_timeline = rec.timelines(sim.last_s)
    coord = sim.coord
    return SimResult(
        routing=config.routing,
        mode=config.mode,
        seed=config.seed,
        warmup_s=config.warmup_s,
        window_s=window,
        plan_throughput_tokens_per_s=sim.plan.throughput_tokens_per_s,
        decode_tokens_per_s=rec.decode_tokens / window if window else 0.0,
        prompt_tokens_per_s=rec.prompt_tokens / window if window else 0.0,
        prompt_latency=LatencyStats.of(rec.ttft),
        decode_latency=LatencyStats.of(rec.step_latency, rec.step_weight),
        num_admitted=coord.num_admitted,
        num_completed=coord.num_completed,
        num_waiting=len(coord.waiting),
        num_dropped=coord.num_dropped,
        nodes=tuple(node_stats),
        bin_s=rec.bin_s,
        decode_timeline=decode_timeline,
        total_timeline=total_timeline,
        wall_s=wall_s,
        num_events=sim.num_events,
        engine=sim.engine,
    )
