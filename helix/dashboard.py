"""`helix top`: a live throughput dashboard over a helix server's Prometheus `/metrics`.

In -> Out: /metrics text -> `parse_metrics` -> `Snapshot` -> `History` (counter deltas) ->
`render` -> a rich renderable. All pure; the polling loop lives in helix/top_cli.py.
Metric names are those of helix/runtime/server.py (serving-facts section 9), all `helix:`.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

PREFIX = "helix:"
Edge = tuple[str, str]
Buckets = tuple[tuple[float, float], ...]
"""Histogram buckets as (upper bound `le`, cumulative count), sorted by `le`, ending at +Inf."""

HISTOGRAMS = {
    "ttft": "time_to_first_token_seconds",
    "itl": "inter_token_latency_seconds",
    "tpot": "time_per_output_token_seconds",
    "e2e": "e2e_request_latency_seconds",
}
_COUNTERS = {
    "prompt_tokens_total": "prompt_tokens",
    "generation_tokens_total": "generation_tokens",
    "request_success_total": "num_success",
    "num_preemptions_total": "num_preemptions",
    "prefix_cache_queries_total": "prefix_queries",
    "prefix_cache_hits_total": "prefix_hits",
}
_NODE_GAUGES = {
    "kv_cache_usage_perc": "kv_usage",
    "node_tokens_per_second": "tokens_per_s",
    "node_up": "up",
    "num_requests_running": "num_running",
    "num_requests_waiting": "num_waiting",
}


@dataclass(frozen=True)
class NodeStats:
    """One pipeline node as its gauges describe it; None where the server exports nothing."""

    node: str
    gpu_kind: str = "?"
    layer_start: int | None = None
    layer_end: int | None = None
    kv_usage: float | None = None
    tokens_per_s: float | None = None
    num_running: float | None = None
    num_waiting: float | None = None
    up: float | None = None
    """1 while the node answers heartbeats, 0 once the coordinator lost it."""


@dataclass(frozen=True)
class Snapshot:
    """One scrape, summed over `model_name`. Counters are cumulative; rates need a `History`."""

    time_s: float
    model_names: tuple[str, ...] = ()
    nodes: tuple[NodeStats, ...] = ()
    num_running: float = 0.0
    num_waiting: float = 0.0
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    num_success: float = 0.0
    num_preemptions: float = 0.0
    prefix_queries: float = 0.0
    prefix_hits: float = 0.0
    routed: dict[Edge, float] = field(default_factory=dict)
    """Requests routed over each edge so far (counter)."""
    planned: dict[Edge, float] = field(default_factory=dict)
    """The plan's flow over each edge, tokens/s."""
    histograms: dict[str, Buckets] = field(default_factory=dict)
    """Keyed like HISTOGRAMS (ttft, itl, tpot, e2e)."""


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """A small Prometheus text-format parser: (sample name, labels, value) per sample line."""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE_RE.match(line)
        if match is None:
            raise ValueError(f"not a Prometheus sample line: {line[:80]!r}")
        labels = {k: _unescape(v) for k, v in _LABEL_RE.findall(match.group(2) or "")}
        yield match.group(1), labels, float(match.group(3))


def _samples(text: str, use_client: bool) -> list[tuple[str, dict[str, str], float]]:
    if use_client:
        try:
            from prometheus_client.parser import text_string_to_metric_families
        except ImportError:
            pass
        else:
            families = text_string_to_metric_families(text)
            return [(s.name, dict(s.labels), float(s.value)) for f in families for s in f.samples]
    return list(parse_exposition(text))


def _as_int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def parse_metrics(text: str, time_s: float = 0.0, *, use_client: bool = True) -> Snapshot:
    """Fold a /metrics page into a Snapshot; ValueError if the text is not Prometheus format.
    `use_client=False` skips prometheus_client and uses `parse_exposition`."""
    totals: dict[str, float] = defaultdict(float)
    nodes: dict[str, dict[str, Any]] = defaultdict(dict)
    routed: dict[Edge, float] = defaultdict(float)
    planned: dict[Edge, float] = defaultdict(float)
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    models: set[str] = set()
    histogram_keys = {name: key for key, name in HISTOGRAMS.items()}
    for name, labels, value in _samples(text, use_client):
        if not name.startswith(PREFIX) or math.isnan(value):
            continue
        short = name[len(PREFIX) :]
        models.update([labels["model_name"]] if "model_name" in labels else [])
        node, edge = labels.get("node"), (labels.get("src", "?"), labels.get("dst", "?"))
        if short.endswith("_bucket") and short.removesuffix("_bucket") in histogram_keys:
            buckets[histogram_keys[short.removesuffix("_bucket")]][float(labels["le"])] += value
        elif short in _COUNTERS:
            totals[_COUNTERS[short]] += value
        elif short == "routed_requests_total":
            routed[edge] += value
        elif short == "planned_flow_tokens_per_second":
            planned[edge] += value
        elif short == "node_info" and node is not None:
            nodes[node].update(
                gpu_kind=labels.get("gpu_kind", "?"),
                layer_start=_as_int(labels.get("layer_start")),
                layer_end=_as_int(labels.get("layer_end")),
            )
        elif short in _NODE_GAUGES:
            if short.startswith("num_requests"):
                totals[_NODE_GAUGES[short]] += value
            if node is not None:
                entry = nodes[node]
                entry[_NODE_GAUGES[short]] = entry.get(_NODE_GAUGES[short], 0.0) + value
                entry.setdefault("gpu_kind", labels.get("gpu_kind", "?"))
    node_rows = [NodeStats(node=n, **fields) for n, fields in nodes.items()]
    node_rows.sort(key=lambda s: (s.layer_start if s.layer_start is not None else -1, s.node))
    return Snapshot(
        time_s=time_s,
        model_names=tuple(sorted(models)),
        nodes=tuple(node_rows),
        routed=dict(sorted(routed.items())),
        planned=dict(sorted(planned.items())),
        histograms={k: tuple(sorted(v.items())) for k, v in sorted(buckets.items())},
        **totals,
    )


# --- derived values: counter deltas and histogram quantiles ----------------------------------


def counter_rate(previous: float, current: float, dt_s: float) -> float:
    """Per-second increase of a counter; a drop means the server restarted from zero."""
    if dt_s <= 0:
        return 0.0
    return (current - previous if current >= previous else current) / dt_s


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """Prometheus' estimate: linear interpolation inside the bucket holding rank q * count;
    the highest finite bound if that bucket is +Inf; None without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, cumulative in buckets:
        if cumulative >= rank and cumulative > below:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (cumulative - below)
        lower, below = upper, cumulative
    return lower


def bucket_delta(newer: Buckets, older: Buckets) -> Buckets:
    """Observations between two scrapes (per bucket); `newer` itself after a counter reset."""
    old = dict(older)
    delta = tuple((le, count - old.get(le, 0.0)) for le, count in newer)
    return newer if any(count < 0 for _, count in delta) else delta


@dataclass
class History:
    """The last `max_samples` snapshots, oldest first."""

    max_samples: int = 60
    snapshots: deque[Snapshot] = field(default_factory=deque)

    def push(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)
        while len(self.snapshots) > self.max_samples:
            self.snapshots.popleft()

    @property
    def latest(self) -> Snapshot | None:
        return self.snapshots[-1] if self.snapshots else None

    def rates(self, attribute: str) -> list[float]:
        """Per-interval rate of a counter field (e.g. generation_tokens), oldest first."""
        pairs = zip(list(self.snapshots), list(self.snapshots)[1:])
        return [
            counter_rate(getattr(a, attribute), getattr(b, attribute), b.time_s - a.time_s)
            for a, b in pairs
        ]

    def edge_rates(self) -> dict[Edge, float]:
        """Requests/s routed over each edge during the last interval."""
        if len(self.snapshots) < 2:
            return {}
        a, b = self.snapshots[-2], self.snapshots[-1]
        dt_s = b.time_s - a.time_s
        return {e: counter_rate(a.routed.get(e, 0.0), n, dt_s) for e, n in b.routed.items()}

    def window(self, key: str) -> Buckets:
        """Histogram observations over the history window; all-time if the window has none."""
        if not self.snapshots:
            return ()
        newest = self.snapshots[-1].histograms.get(key, ())
        delta = bucket_delta(newest, self.snapshots[0].histograms.get(key, ()))
        return delta if delta and delta[-1][1] > 0 else newest


# --- rendering --------------------------------------------------------------------------------

_BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 60) -> str:
    """The last `width` values as block characters scaled to their maximum."""
    values = values[-width:]
    top = max(values, default=0.0)
    if top <= 0:
        return _BLOCKS[0] * len(values)
    return "".join(_BLOCKS[round(max(v, 0.0) / top * (len(_BLOCKS) - 1))] for v in values)


def usage_bar(fraction: float, width: int = 20) -> Any:
    """A KV-usage bar: green below 70 %, yellow below 90 %, red above."""
    from rich.text import Text

    fraction = min(max(fraction, 0.0), 1.0)
    filled = round(fraction * width)
    color = "green" if fraction < 0.7 else "yellow" if fraction < 0.9 else "red"
    bar = Text("█" * filled, style=color)
    bar.append("░" * (width - filled), style="dim")
    bar.append(f" {fraction * 100:5.1f}%")
    return bar


def _fmt(value: float | None, spec: str = ",.1f") -> str:
    return "-" if value is None else format(value, spec)


def _node_table(snapshot: Snapshot) -> Any:
    from rich.table import Table

    table = Table(title="nodes", expand=True)
    for column in ("node", "GPU", "layers", "KV cache", "tok/s", "running", "waiting"):
        table.add_column(column, justify="left" if column in ("node", "GPU") else "right")
    for n in snapshot.nodes:
        layers = "-" if n.layer_start is None else f"[{n.layer_start}, {n.layer_end})"
        kv = "-" if n.kv_usage is None else usage_bar(n.kv_usage)
        queue = (_fmt(n.num_running, ".0f"), _fmt(n.num_waiting, ".0f"))
        name = f"{n.node} [bold red](down)[/]" if n.up == 0 else n.node
        table.add_row(name, n.gpu_kind, layers, kv, _fmt(n.tokens_per_s), *queue)
    return table


def _shares(values: dict[Edge, float]) -> dict[Edge, float]:
    """Each edge's part of everything leaving its source (none while the source is idle)."""
    out: dict[str, float] = defaultdict(float)
    for (src, _), value in values.items():
        out[src] += value
    return {e: v / out[e[0]] for e, v in values.items() if out[e[0]] > 0}


def _flow_table(snapshot: Snapshot, history: History) -> Any:
    from rich.table import Table

    rates = history.edge_rates()
    routed_share, planned_share = _shares(rates), _shares(snapshot.planned)
    table = Table(title="flows: routed requests against the planned max flow", expand=True)
    for column in ("edge", "routed req/s", "routed share", "planned tok/s", "planned share"):
        table.add_column(column, justify="left" if column == "edge" else "right")
    for edge in sorted(set(snapshot.routed) | set(snapshot.planned)):
        table.add_row(
            f"{edge[0]} → {edge[1]}",
            _fmt(rates.get(edge), ",.2f"),
            _fmt(routed_share.get(edge), ".0%"),
            _fmt(snapshot.planned.get(edge)),
            _fmt(planned_share.get(edge), ".0%"),
        )
    return table


def _latency_table(history: History) -> Any:
    from rich.table import Table

    table = Table(title="latency (ms, estimated from histogram buckets)", expand=True)
    for column in ("metric", "p50", "p90", "p99", "samples"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2e", "E2E")):
        buckets = history.window(key)
        if not buckets:
            continue
        cells = [histogram_quantile(q, buckets) for q in (0.5, 0.9, 0.99)]
        table.add_row(
            label, *(_fmt(c and c * 1000.0, ",.1f") for c in cells), f"{buckets[-1][1]:.0f}"
        )
    return table


def render(snapshot: Snapshot | None, history: History, *, url: str = "", error: str = "") -> Any:
    """One dashboard frame. With `error`, a plain 'not responding' line leads the frame and
    the last data seen (if any) follows it."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    parts: list[Any] = []
    if error:
        message = Text(f"server at {url} is not responding: {error}", style="bold red")
        message.append("\nretrying; Ctrl-C quits", style="dim")
        parts.append(Panel(message, title="helix top", border_style="red"))
    if snapshot is None:
        return Group(*parts)
    generation = history.rates("generation_tokens")
    prompt = history.rates("prompt_tokens")
    hit_rate = snapshot.prefix_hits / snapshot.prefix_queries if snapshot.prefix_queries else None
    models = ", ".join(snapshot.model_names) or "?"
    summary = Text(f"{url}  model {models}\n", style="bold")
    summary.append(
        f"running {snapshot.num_running:.0f}  waiting {snapshot.num_waiting:.0f}  "
        f"generation {_fmt(generation[-1] if generation else None)} tok/s  "
        f"prompt {_fmt(prompt[-1] if prompt else None)} tok/s  "
        f"finished {snapshot.num_success:,.0f}  preemptions {snapshot.num_preemptions:,.0f}  "
        f"prefix-cache hits {_fmt(hit_rate, '.0%')}"
    )
    spark = Text(sparkline(generation) or "(needs two samples)", style="cyan")
    if generation:
        spark.append(f"  now {generation[-1]:,.1f}  peak {max(generation):,.1f} tok/s")
    title = "helix top" if not error else "last data seen"
    parts.append(Panel(Group(summary, spark), title=title, subtitle="generation tokens/s"))
    parts.append(_node_table(snapshot))
    if snapshot.routed or snapshot.planned:
        parts.append(_flow_table(snapshot, history))
    parts.append(_latency_table(history))
    return Group(*parts)
