"""Max flow of a placement, its path decomposition (hops, latency), and the combinatorial bound.

Graph (node-split, as in the Helix paper):

    source --(s_i == 0)--> i --T_i(k_i)--> i' --(e_i == s_j)--> j --> ... --(e_j == L)--> sink

With partial inference an edge i' -> j also exists when s_j <= e_i < e_j: j then runs only the
layers [e_i, e_j) of its range, while its capacity is still charged for the whole range.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .problem import SINK, SOURCE, Problem

Placement = Mapping[str, tuple[int, int]]
"""node name -> half-open layer range [start, end); unused nodes are absent."""

_SCALE = 1000.0  # OR-Tools max flow takes int64 capacities: work in milli-tokens/s.


@dataclass(frozen=True)
class FlowResult:
    value_tokens_per_s: float
    edge_flows: dict[tuple[str, str], float]
    """Positive flows on source->node, node->node and node->sink edges."""
    node_flows: dict[str, float]


def usable_edge(a: tuple[int, int], b: tuple[int, int], partial: bool) -> bool:
    """Can flow leave a node holding `a` into a node holding `b`?"""
    if partial:
        return b[0] <= a[1] < b[1]
    return a[1] == b[0]


def placement_edges(
    problem: Problem, placement: Placement, partial: bool = False
) -> list[tuple[str, str, float]]:
    """Directed capacity edges (u, v, tokens/s) between source, nodes and sink; sorted, stable."""
    num_layers = problem.num_layers
    names = sorted(placement)
    edges: list[tuple[str, str, float]] = []
    for name in names:
        start, end = placement[name]
        if start == 0 and name in problem.source_links:
            edges.append((SOURCE, name, problem.source_links[name].tokens_per_s))
        if end == num_layers and name in problem.sink_links:
            edges.append((name, SINK, problem.sink_links[name].tokens_per_s))
        for other in names:
            link = problem.links.get((name, other))
            if other != name and link and usable_edge(placement[name], placement[other], partial):
                edges.append((name, other, link.tokens_per_s))
    return edges


def node_capacity(problem: Problem, name: str, layers: tuple[int, int]) -> float:
    return problem.node(name).capacity(layers[0], layers[1], problem.num_layers)


def max_flow(problem: Problem, placement: Placement, partial: bool = False) -> FlowResult:
    """Exact max flow source -> sink through the placed cluster (OR-Tools push-relabel)."""
    from ortools.graph.python import max_flow as ortools_max_flow

    names = sorted(placement)
    index = {SOURCE: 0, SINK: 1}
    for i, name in enumerate(names):
        index[name] = 2 + 2 * i  # node-in; node-out is index + 1
    solver = ortools_max_flow.SimpleMaxFlow()
    arcs: list[tuple[str, str, int]] = []
    for name in names:
        cap = node_capacity(problem, name, placement[name])
        arcs.append(
            (
                name,
                name,
                solver.add_arc_with_capacity(index[name], index[name] + 1, int(cap * _SCALE)),
            )
        )
    for u, v, cap in placement_edges(problem, placement, partial):
        tail = index[u] + 1 if u not in (SOURCE, SINK) else index[u]
        arcs.append((u, v, solver.add_arc_with_capacity(tail, index[v], int(cap * _SCALE))))
    if not names or solver.solve(0, 1) != solver.OPTIMAL:
        return FlowResult(0.0, {}, {})
    edge_flows: dict[tuple[str, str], float] = {}
    node_flows: dict[str, float] = {}
    for u, v, arc in arcs:
        flow = solver.flow(arc) / _SCALE
        if flow <= 0:
            continue
        if u == v:
            node_flows[u] = flow
        else:
            edge_flows[(u, v)] = flow
    return FlowResult(solver.optimal_flow() / _SCALE, edge_flows, node_flows)


@dataclass(frozen=True)
class PathStats:
    hops_max: int
    hops_mean: float
    latency_ms_mean: float
    latency_ms_max: float
    num_paths: int


def decompose(edge_flows: Mapping[tuple[str, str], float]) -> list[tuple[list[str], float]]:
    """Split an acyclic source->sink flow into paths (largest bottleneck first, deterministic)."""
    remaining = {edge: flow for edge, flow in edge_flows.items() if flow > 1e-9}
    out_edges: dict[str, list[str]] = {}
    for u, v in sorted(remaining):
        out_edges.setdefault(u, []).append(v)
    paths: list[tuple[list[str], float]] = []
    while True:
        path = [SOURCE]
        while path[-1] != SINK:
            nexts = [
                v for v in out_edges.get(path[-1], []) if remaining.get((path[-1], v), 0) > 1e-9
            ]
            if not nexts or len(path) > len(out_edges) + 2:
                break
            tail = path[-1]
            path.append(max(nexts, key=lambda v: (remaining[(tail, v)], v)))
        if path[-1] != SINK:
            return paths
        amount = min(remaining[(path[i], path[i + 1])] for i in range(len(path) - 1))
        for i in range(len(path) - 1):
            remaining[(path[i], path[i + 1])] -= amount
        paths.append((path[1:-1], amount))


def path_stats(
    problem: Problem, placement: Placement, edge_flows: Mapping[tuple[str, str], float]
) -> PathStats:
    """Hops and per-token latency (node compute + link latencies, coordinator links included)."""
    paths = decompose(edge_flows)
    total = sum(amount for _, amount in paths)
    if not paths or total <= 0:
        return PathStats(0, 0.0, 0.0, 0.0, 0)
    latencies: list[float] = []
    for nodes, _ in paths:
        latency = (
            problem.source_links[nodes[0]].latency_ms + problem.sink_links[nodes[-1]].latency_ms
        )
        for i, name in enumerate(nodes):
            start, end = placement[name]
            if i > 0:  # partial inference: only the layers beyond the previous node's end run here
                start = max(start, placement[nodes[i - 1]][1])
                latency += problem.links[(nodes[i - 1], name)].latency_ms
            node = problem.node(name)
            latency += node.latency_ms[end - start - 1]
        latencies.append(latency)
    return PathStats(
        hops_max=max(len(nodes) for nodes, _ in paths),
        hops_mean=sum(len(nodes) * amount for nodes, amount in paths) / total,
        latency_ms_mean=sum(lat * amount for lat, (_, amount) in zip(latencies, paths)) / total,
        latency_ms_max=max(latencies),
        num_paths=len(paths),
    )


def layer_bound(problem: Problem) -> float:
    """Largest F with F*L <= sum_i max_k k*min(T_i(k), F): every layer carries all of F, and no
    node carries more than F. Far tighter than sum_i max_k k*T_i(k) / L on mixed clusters."""
    num_layers = problem.num_layers

    def supply(flow: float) -> float:
        total = 0.0
        for node in sorted(problem.nodes, key=lambda n: n.name):
            best = 0.0
            for k in range(1, node.max_layers + 1):
                cap = min(node.tokens_per_s[k - 1], flow)
                if k < num_layers:  # a node holding part of the model moves hidden states
                    cap = min(cap, node.nic_tokens_per_s)
                best = max(best, k * cap)
            total += best
        return total

    low, high = 0.0, max(max(node.tokens_per_s) for node in problem.nodes)
    source_total = sum(edge.tokens_per_s for edge in problem.source_links.values())
    high = min(high * len(problem.nodes), source_total)
    for _ in range(200):
        mid = (low + high) / 2
        if mid * num_layers <= supply(mid) * (1 + 1e-9):
            low = mid
        else:
            high = mid
    return high


def paper_bound(problem: Problem) -> float:
    """The Helix artifact's ceiling sum_i max_k k*T_i(k) / L (ignores coverage and memory)."""
    return (
        sum(max(k * t for k, t in enumerate(node.tokens_per_s, start=1)) for node in problem.nodes)
        / problem.num_layers
    )
