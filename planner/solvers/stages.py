"""Stage packing: the layers cut into consecutive stages, each held in full by a group of nodes.

Every member of a stage holds the same range [b, b + l), so a stage carries the sum of its members'
T(l) and, with the stages joined all-to-all, the plan carries the smallest stage's sum. For a
target rate F this is bin covering with bins of a chosen length: a stage of length l is covered
once its members' T(l) sum to F, and a node can sit only in stages no longer than it can hold.
When T(k) ~ T(1)/k (the roofline's decode regime), a node adds about T(1)/F layers to whatever
stage it joins, so a plan at F close to the layer bound wastes only the overshoot of each stage:
with many small nodes that is little, where equal-rate pipelines (the greedy) lose whole nodes'
worth of mismatch. Stages also mean few hops: a route passes one node per stage.

Nodes are taken in order of how few layers they can hold, so the constrained ones are placed
first; each stage picks the length whose group overshoots F the least. The largest F that covers
all layers is found by scanning down from the layer bound; plans are judged by the exact max flow.
"""

from __future__ import annotations

from dataclasses import replace

from ..maxflow import layer_bound, max_flow
from ..problem import NodeCapacity, Problem


def _potential(node: NodeCapacity, rate: float, num_layers: int) -> float:
    """Layer-tokens per second the node can give at `rate`: max_k k * min(T(k), rate)."""
    return max(
        k * min(node.capacity(0, k, num_layers), rate) for k in range(1, node.max_layers + 1)
    )


def _stage_group(
    pool: list[NodeCapacity],
    length: int,
    rate: float,
    num_layers: int,
    potential: dict[str, float],
) -> tuple[float, list[NodeCapacity]] | None:
    """The most efficient group for one stage of `length` at `rate`, the first node of `pool`
    included: a prefix of the pool (most constrained nodes first) closed by the node that wastes
    least. Efficiency = length * rate over the members' potential."""
    eligible = [pool[0]] + [node for node in pool[1:] if node.max_layers >= length]
    caps = [node.capacity(0, length, num_layers) for node in eligible]
    best: tuple[float, list[NodeCapacity]] | None = None
    carried = length * rate
    total, spent = 0.0, 0.0
    for m, node in enumerate(eligible):
        total += caps[m]
        spent += potential[node.name]
        if total >= rate * (1 - 1e-12):
            use = carried / spent
            if best is None or use > best[0]:
                best = (use, eligible[: m + 1])
            break
        # Close with one more node: the one of each kind (first seen) that wastes least.
        need = rate - total
        seen: set[tuple[str, float]] = set()
        for j in range(m + 1, len(eligible)):
            other = eligible[j]
            kind = (other.gpu, caps[j])
            if kind in seen or caps[j] < need * (1 - 1e-12):
                continue
            seen.add(kind)
            use = carried / (spent + potential[other.name])
            if best is None or use > best[0]:
                best = (use, eligible[: m + 1] + [other])
    return best


def stage_plan(
    nodes: list[NodeCapacity], rate: float, num_layers: int, slack: float = 0.0
) -> list[tuple[int, list[NodeCapacity]]] | None:
    """Stages (length, members) covering all layers at `rate`, or None when they cannot. Each
    stage takes the length whose group turns the largest share of its members' potential into
    carried layer-tokens (length * rate)."""
    pool = sorted(nodes, key=lambda n: (n.max_layers, -n.tokens_per_s[0], n.name))
    potential = {node.name: _potential(node, rate, num_layers) for node in pool}
    stages: list[tuple[int, list[NodeCapacity]]] = []
    left = num_layers
    while left > 0:
        if not pool:
            return None
        options: list[tuple[float, int, list[NodeCapacity]]] = []
        for length in range(min(pool[0].max_layers, left), 0, -1):
            found = _stage_group(pool, length, rate, num_layers, potential)
            if found is not None:
                options.append((found[0], length, found[1]))
        top = max((use for use, _, _ in options), default=0.0)
        # The longest stage within `slack` of the best use (fewer hops, fewer split nodes).
        best = next((o for o in options if o[0] >= top * (1 - slack) - 1e-12), None)
        if best is None:
            pool = pool[1:]  # this node cannot help at this rate
            continue
        _, length, group = best
        stages.append((length, group))
        members = {node.name for node in group}
        pool = [node for node in pool if node.name not in members]
        left -= length
    return stages


SLACKS = (0.0, 0.01, 0.03, 0.1, 1.0)


def stage_placement(problem: Problem, steps: int = 120) -> dict[str, tuple[int, int]]:
    """The best exact flow over target rates scanned down from the layer bound (each with a few
    preferences between efficient and long stages). With several regions, also one stage chain
    per region that can hold the model alone, so that no stage boundary crosses a slow link."""
    candidates = [_best_scan(problem, steps)]
    regions = sorted({node.region for node in problem.nodes})
    if len(regions) > 1:
        union: dict[str, tuple[int, int]] = {}
        for region in regions:
            nodes = tuple(node for node in problem.nodes if node.region == region)
            if sum(node.max_layers for node in nodes) < problem.num_layers:
                continue
            union.update(_best_scan(replace(problem, nodes=nodes), steps))
        candidates.append(union)
    scored = [
        (max_flow(problem, placement).value_tokens_per_s, placement) for placement in candidates
    ]
    return max(scored, key=lambda item: item[0])[1]


def _best_scan(problem: Problem, steps: int) -> dict[str, tuple[int, int]]:
    best: tuple[float, dict[str, tuple[int, int]]] = (-1.0, {})
    for slack in SLACKS:
        value, placement = _scan(problem, slack, steps)
        if value > best[0] * (1 + 1e-12):
            best = (value, placement)
    return best[1]


def _scan(problem: Problem, slack: float, steps: int) -> tuple[float, dict[str, tuple[int, int]]]:
    bound = layer_bound(problem)
    nodes = sorted(problem.nodes, key=lambda n: n.name)
    best: tuple[float, dict[str, tuple[int, int]]] = (-1.0, {})
    misses = 0
    for step in range(steps):
        rate = bound * (1 - 0.0025 * step)
        stages = stage_plan(nodes, rate, problem.num_layers, slack)
        if stages is None:
            continue
        placement: dict[str, tuple[int, int]] = {}
        start = 0
        for length, group in stages:
            for node in group:
                placement[node.name] = (start, start + length)
            start += length
        value = max_flow(problem, placement).value_tokens_per_s
        if value > best[0] * (1 + 1e-12):
            best, misses = (value, placement), 0
        else:
            misses += 1
            if misses >= 12:
                break
    return best
