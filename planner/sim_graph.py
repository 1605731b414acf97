"""The routing graph a simulated plan offers: which node may follow which, and the plan's flows.

Nodes are numbered 0..n-1 in name order; SOURCE and SINK (the coordinator's two roles) are -1 and
-2. `build_route_graph` also checks the plan against the cluster and raises SpecError naming the
plan field at fault (`plan.model`, `plan.nodes.<name>.layers`, `plan.flows[3]`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

from .maxflow import usable_edge
from .plan import COORDINATOR, Plan
from .problem import Problem
from .spec import SpecError

SOURCE = -1
SINK = -2
MIN_FLOW_SHARE = 0.05
"""An edge carrying less than this share of its tail's largest outgoing edge flow is never
routed on. The paper's Fail-Flow mask compares with the tail's whole outflow, which on a
coordinator feeding 20+ first-stage nodes would mask every edge."""


@dataclass(frozen=True)
class RouteGraph:
    names: tuple[str, ...]
    ranges: tuple[tuple[int, int], ...]
    """Layer range [start, end) each node holds."""
    num_layers: int
    succ: dict[int, tuple[int, ...]]
    """Successors of SOURCE and of each node that lie on some SOURCE -> SINK path, sorted."""
    flow: dict[tuple[int, int], float]
    """Plan flow (tokens/s) on each edge of `succ`; empty for graphs built without flows."""
    partial: bool

    def layers_run(self, prev: int, node: int) -> int:
        """Layers `node` runs for a request arriving from `prev` (partial inference: the tail)."""
        start, end = self.ranges[node]
        if prev != SOURCE:
            start = max(start, self.ranges[prev][1])
        return end - start


def _validate_nodes(plan: Plan, problem: Problem) -> None:
    if plan.model != problem.model.name:
        raise SpecError(
            "plan.model", f"{plan.model!r}, but the cluster serves {problem.model.name!r}"
        )
    if plan.num_layers != problem.num_layers:
        raise SpecError(
            "plan.num_layers",
            f"{plan.num_layers}, but {problem.model.name} has {problem.num_layers}",
        )
    known = {node.name for node in problem.nodes}
    if not plan.nodes:
        raise SpecError("plan.nodes", "the plan places no layers on any node")
    for name, node in sorted(plan.nodes.items()):
        if name not in known:
            raise SpecError(f"plan.nodes.{name}", "no node of that name in the cluster")
        if not 0 <= node.start < node.end <= problem.num_layers:
            raise SpecError(
                f"plan.nodes.{name}.layers",
                f"[{node.start}, {node.end}) is outside [0, {problem.num_layers})",
            )
        most = problem.node(name).max_layers
        if node.num_layers > most:
            raise SpecError(
                f"plan.nodes.{name}.layers",
                f"{node.num_layers} layers, but a {problem.node(name).gpu} holds at most {most}",
            )


def _all_edges(plan: Plan, problem: Problem, names: list[str]) -> set[tuple[int, int]]:
    index = {name: i for i, name in enumerate(names)}
    edges: set[tuple[int, int]] = set()
    for name in names:
        node = plan.nodes[name]
        i = index[name]
        if node.start == 0 and name in problem.source_links:
            edges.add((SOURCE, i))
        if node.end == plan.num_layers and name in problem.sink_links:
            edges.add((i, SINK))
        for other in names:
            ranges = (node.start, node.end), (plan.nodes[other].start, plan.nodes[other].end)
            if (name, other) in problem.links and usable_edge(*ranges, plan.partial_inference):
                edges.add((i, index[other]))
    return edges


def _plan_flows(
    plan: Plan, names: list[str], usable: set[tuple[int, int]]
) -> dict[tuple[int, int], float]:
    index = {name: i for i, name in enumerate(names)}
    flows: dict[tuple[int, int], float] = {}
    for i, (u, v, value) in enumerate(plan.flows):
        ends = []
        for end, role in ((u, SOURCE), (v, SINK)):
            if end == COORDINATOR:
                ends.append(role)
            elif end in index:
                ends.append(index[end])
            else:
                raise SpecError(f"plan.flows[{i}]", f"names {end!r}, which is not in plan.nodes")
        edge = (ends[0], ends[1])
        if edge not in usable:
            raise SpecError(
                f"plan.flows[{i}]", f"{u} -> {v}: no link, or the layer ranges do not chain"
            )
        if value > 0:
            flows[edge] = flows.get(edge, 0.0) + value
    return flows


def _on_paths(edges: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """Edges lying on at least one SOURCE -> SINK path."""
    forward: dict[int, list[int]] = {}
    backward: dict[int, list[int]] = {}
    for u, v in edges:
        forward.setdefault(u, []).append(v)
        backward.setdefault(v, []).append(u)

    def reach(start: int, adjacency: dict[int, list[int]]) -> set[int]:
        seen, stack = {start}, [start]
        while stack:
            for nxt in adjacency.get(stack.pop(), []):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen

    from_source, to_sink = reach(SOURCE, forward), reach(SINK, backward)
    return {(u, v) for u, v in edges if u in from_source and v in to_sink}


def _coverage_error(plan: Plan, names: list[str], edges: set[tuple[int, int]]) -> SpecError:
    reached = {v for u, v in edges if u == SOURCE}
    stack = list(reached)
    while stack:
        u = stack.pop()
        for a, b in edges:
            if a == u and b >= 0 and b not in reached:
                reached.add(b)
                stack.append(b)
    furthest = max((plan.nodes[names[i]].end for i in reached), default=0)
    return SpecError(
        "plan.nodes",
        f"the placement does not cover {plan.model}: no chain of linked nodes runs layers "
        f"0..{plan.num_layers}; coverage from the coordinator stops at layer {furthest}",
    )


def build_route_graph(plan: Plan, problem: Problem, use_flows: bool) -> RouteGraph:
    """Check `plan` against the cluster and build its routing graph: the plan's flow edges
    (minus Fail-Flow edges) when `use_flows`, else every usable link between its nodes."""
    _validate_nodes(plan, problem)
    names = sorted(plan.nodes)
    usable = _all_edges(plan, problem, names)
    if not _on_paths(usable):
        raise _coverage_error(plan, names, usable)
    flows = _plan_flows(plan, names, usable)
    if use_flows:
        largest: dict[int, float] = {}
        for (u, _), value in flows.items():
            largest[u] = max(largest.get(u, 0.0), value)
        kept = {e for e, value in flows.items() if value >= MIN_FLOW_SHARE * largest[e[0]]}
        edges = _on_paths(kept)
        if not edges:
            raise SpecError(
                "plan.flows",
                "no flow reaches the last layer; re-plan, or route with random or swarm",
            )
    else:
        edges = _on_paths(usable)
    succ: dict[int, list[int]] = {}
    for u, v in sorted(edges):
        succ.setdefault(u, []).append(v)
    return RouteGraph(
        names=tuple(names),
        ranges=tuple((plan.nodes[n].start, plan.nodes[n].end) for n in names),
        num_layers=plan.num_layers,
        succ={u: tuple(vs) for u, vs in succ.items()},
        flow={e: flows[e] for e in edges if e in flows},
        partial=plan.partial_inference,
    )
