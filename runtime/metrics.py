"""Prometheus metrics of a helix server, in a dedicated registry (never the global one).

Names follow vLLM v1 with the `helix:` prefix; every series carries `model_name`. Counters get
prometheus-client's `_total` suffix; `*_created` series are dropped at exposition. Engine-side
values (queue depths, KV usage, preemptions, prefix-cache tokens) are pulled from
`AsyncEngine.stats()` at scrape time; per-request latencies are pushed by `RequestTracker`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric

from .node_load import Edge, NodeLoad
from .outputs import RequestOutput

# fmt: off
_TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                   2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0)
_TOKEN_BUCKETS_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
                    5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_E2E_BUCKETS_S = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                  60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
# fmt: on

PREFIX = "helix:"
# name (exported as PREFIX + name; counters gain "_total"), type, labels besides model_name, help
METRICS: tuple[tuple[str, type, tuple[str, ...], str], ...] = (
    ("num_requests_running", Gauge, (), "Requests in the engine's running batch."),
    ("num_requests_waiting", Gauge, (), "Requests waiting to be scheduled."),
    ("kv_cache_usage_perc", Gauge, ("node", "gpu_kind"), "KV block usage; 1 means 100 percent."),
    ("node_tokens_per_second", Gauge, ("node",), "Tokens through a node per second."),
    ("node_info", Gauge, ("node", "gpu_kind", "layer_start", "layer_end"), "1 per node."),
    ("node_up", Gauge, ("node",), "1 while the node answers heartbeats, 0 once it is lost."),
    ("planned_flow_tokens_per_second", Gauge, ("src", "dst"), "Planned flow on a routing edge."),
    ("prompt_tokens", Counter, (), "Prefilled prompt tokens."),
    ("generation_tokens", Counter, (), "Generated tokens."),
    ("request_success", Counter, ("finished_reason",), "Finished completions by reason."),
    ("num_preemptions", Counter, (), "Preemptions by recompute."),
    ("prefix_cache_queries", Counter, (), "Prompt tokens looked up in the prefix cache."),
    ("prefix_cache_hits", Counter, (), "Prompt tokens served from the prefix cache."),
    ("routed_requests", Counter, ("src", "dst"), "Requests that crossed a routing edge."),
    ("time_to_first_token_seconds", Histogram, (), "Arrival to first generated token."),
    ("time_per_output_token_seconds", Histogram, (), "Mean decode time per token of a request."),
    ("inter_token_latency_seconds", Histogram, (), "Gap between consecutive token deliveries."),
    ("e2e_request_latency_seconds", Histogram, (), "Arrival to finish."),
)
_BUCKETS_S = {
    "time_to_first_token_seconds": _TTFT_BUCKETS_S,
    "time_per_output_token_seconds": _TOKEN_BUCKETS_S,
    "inter_token_latency_seconds": _TOKEN_BUCKETS_S,
    "e2e_request_latency_seconds": _E2E_BUCKETS_S,
}
# Engine counters pulled from AsyncEngine.stats(): metric name -> stats key.
_ENGINE_COUNTERS = {
    "num_preemptions": "num_preemptions",
    "prefix_cache_queries": "prefix_cache_queries",
    "prefix_cache_hits": "prefix_cache_hits",
}


class _WithoutCreated:
    """Registry view that drops the `*_created` samples prometheus-client adds by default."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


class ServingMetrics:
    """All series of one served model. Thread-compatible: prometheus-client objects lock."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry(auto_describe=True)
        self._series: dict[str, Any] = {}
        for name, kind, labels, doc in METRICS:
            kwargs: dict[str, Any] = {"buckets": _BUCKETS_S[name]} if kind is Histogram else {}
            self._series[name] = kind(
                PREFIX + name, doc, ("model_name", *labels), registry=self.registry, **kwargs
            )
        for name, _, labels, _ in METRICS:
            if not labels:  # export a 0 before the first event, so rate() has a start
                self.labels(name)
        self._exported: dict[str, float] = dict.fromkeys(_ENGINE_COUNTERS, 0.0)
        self._routed: dict[Edge, int] = {}
        self._node_info: dict[str, tuple[str, str, int, int]] = {}

    def labels(self, name: str, *values: object) -> Any:
        """The child series of metric `name` for this model and the given extra label values."""
        return self._series[name].labels(self.model_name, *(str(v) for v in values))

    def observe_topology(
        self, nodes: Sequence[NodeLoad], routed: Mapping[Edge, int], planned: Mapping[Edge, float]
    ) -> None:
        """Per-node series, routed-request counters, planned flows (AsyncEngine.topology)."""
        for n in nodes:
            info = (n.name, n.gpu_kind, *n.layers)
            old = self._node_info.get(n.name)
            if old != info:
                if old is not None:
                    self._series["node_info"].remove(self.model_name, *map(str, old))
                self.labels("node_info", *info).set(1)
                self._node_info[n.name] = info
            self.labels("node_up", n.name).set(1 if n.alive else 0)
            self.labels("kv_cache_usage_perc", n.name, n.gpu_kind).set(n.kv_usage)
            self.labels("node_tokens_per_second", n.name).set(n.tokens_per_s)
        for edge, count in sorted(routed.items()):
            if count > self._routed.get(edge, 0):
                self.labels("routed_requests", *edge).inc(count - self._routed.get(edge, 0))
                self._routed[edge] = count
        flows = self._series["planned_flow_tokens_per_second"]
        flows.clear()  # re-planned flows replace the old ones, edges to dead nodes included
        for (src, dst), value in sorted(planned.items()):
            self.labels("planned_flow_tokens_per_second", src, dst).set(value)

    def observe_engine(self, stats: Mapping[str, float]) -> None:
        """Copy `AsyncEngine.stats()` into the queue gauges and engine counters."""
        self.labels("num_requests_running").set(stats.get("num_requests_running", 0))
        self.labels("num_requests_waiting").set(stats.get("num_requests_waiting", 0))
        for attr, key in _ENGINE_COUNTERS.items():
            value = float(stats.get(key, 0.0))
            if value > self._exported[attr]:  # counters only move up; a restart keeps the max
                self.labels(attr).inc(value - self._exported[attr])
                self._exported[attr] = value

    def track(self) -> RequestTracker:
        """Start timing one request."""
        return RequestTracker(self)

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return bytes(generate_latest(_WithoutCreated(self.registry)))


class RequestTracker:
    """Latency bookkeeping of one request, fed with the snapshots its client receives."""

    def __init__(self, metrics: ServingMetrics) -> None:
        self.metrics = metrics
        self.arrival = time.monotonic()
        self.first_token_at: float | None = None
        self.last_token_at = self.arrival
        self.num_tokens = 0
        self.is_closed = False

    def on_output(self, output: RequestOutput) -> None:
        num_tokens = sum(len(c.token_ids) for c in output.outputs)
        if num_tokens <= self.num_tokens or self.is_closed:
            return
        now = time.monotonic()
        m = self.metrics
        if self.first_token_at is None:
            self.first_token_at = now
            m.labels("time_to_first_token_seconds").observe(now - self.arrival)
            m.labels("prompt_tokens").inc(len(output.prompt_token_ids))
        else:
            m.labels("inter_token_latency_seconds").observe(now - self.last_token_at)
        m.labels("generation_tokens").inc(num_tokens - self.num_tokens)
        self.num_tokens, self.last_token_at = num_tokens, now

    def finish(self, output: RequestOutput | None) -> None:
        """Record the end of the request (None: it ended without a final snapshot)."""
        if self.is_closed:
            return
        if output is not None:
            self.on_output(output)
        self.is_closed = True
        m = self.metrics
        now = time.monotonic()
        m.labels("e2e_request_latency_seconds").observe(now - self.arrival)
        if self.first_token_at is not None and self.num_tokens > 1:
            per_token = (self.last_token_at - self.first_token_at) / (self.num_tokens - 1)
            m.labels("time_per_output_token_seconds").observe(per_token)
        completions = output.outputs if output is not None else []
        for completion in completions:
            m.labels("request_success", completion.finish_reason or "abort").inc()
        if not completions:
            m.labels("request_success", "abort").inc()
