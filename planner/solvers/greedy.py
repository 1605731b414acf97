"""Fast combinatorial placement: pipelines packed at a common rate or stages packed at a common
rate (`stages.py`), whichever flows more, then local search on the flow.

For a target rate F every node can hold k_i(F) = max{k : cap_i(k) >= F} layers while carrying F.
Packing nodes into pipelines whose layers sum to L (bin covering, largest first, region by region)
gives P(F) pipelines at rate F. We take the F with the best P(F)*F, remove those nodes, and repeat
at lower rates with what is left. Local search then moves single boundaries while the exact max flow
improves.
"""

from __future__ import annotations

import time

from ..maxflow import Placement, max_flow
from ..problem import SOURCE, NodeCapacity, Problem
from . import SolveOptions, SolveResult, register
from .stages import stage_placement


def _layers_at_rate(node: NodeCapacity, rate: float, num_layers: int) -> int:
    best = 0
    for k in range(1, node.max_layers + 1):
        cap = node.tokens_per_s[k - 1]
        if k < num_layers:
            cap = min(cap, node.nic_tokens_per_s)
        if cap >= rate * (1 - 1e-12):
            best = k
    return best


def _cover(
    sizes: list[tuple[int, str]], num_layers: int, max_hops: int | None
) -> list[list[tuple[int, str]]]:
    """Bin covering: groups of (k, name) whose k sum to >= L, as many as possible, few hops each."""
    items = sorted(sizes, key=lambda item: (-item[0], item[1]))
    pipelines: list[list[tuple[int, str]]] = []
    while items:
        group: list[tuple[int, str]] = []
        need = num_layers
        pool = list(items)
        while need > 0 and pool:
            # Close the bin with the smallest item that finishes it, else take the largest.
            closing = [item for item in pool if item[0] >= need]
            pick = min(closing, key=lambda item: (item[0], item[1])) if closing else pool[0]
            group.append(pick)
            pool.remove(pick)
            need -= pick[0]
        if need > 0 or (max_hops is not None and len(group) > max_hops):
            break
        pipelines.append(group)
        items = pool
    return pipelines


def _rates(nodes: list[NodeCapacity]) -> list[float]:
    rates = {min(t, n.nic_tokens_per_s) for n in nodes for t in n.tokens_per_s}
    return sorted(rates, reverse=True)


def _pack(
    problem: Problem, nodes: list[NodeCapacity], rate: float, max_hops: int | None
) -> list[list[tuple[int, str]]]:
    """Pipelines at `rate`, formed inside each region first, then across regions."""
    num_layers = problem.num_layers
    by_region: dict[str, list[tuple[int, str]]] = {}
    for node in nodes:
        k = _layers_at_rate(node, rate, num_layers)
        if k:
            by_region.setdefault(node.region, []).append((k, node.name))
    pipelines: list[list[tuple[int, str]]] = []
    leftovers: list[tuple[int, str]] = []
    for region in sorted(by_region):
        found = _cover(by_region[region], num_layers, max_hops)
        used = {name for group in found for _, name in group}
        pipelines += found
        leftovers += [item for item in by_region[region] if item[1] not in used]
    return pipelines + _cover(leftovers, num_layers, max_hops)


def _pipeline_rate(problem: Problem, group: list[tuple[int, str]], rate: float) -> float:
    """The rate a pipeline really gets: links between consecutive nodes may be slower."""
    for (_, a), (_, b) in zip(group, group[1:]):
        link = problem.links.get((a, b))
        rate = min(rate, link.tokens_per_s if link else 0.0)
    first, last = group[0][1], group[-1][1]
    for name, links in ((first, problem.source_links), (last, problem.sink_links)):
        rate = min(rate, links[name].tokens_per_s if name in links else 0.0)
    return rate


def pipeline_placement(problem: Problem, max_hops: int | None = None) -> dict[str, tuple[int, int]]:
    """Greedy rounds of equal-rate pipelines; nodes in a pipeline get consecutive ranges."""
    num_layers = problem.num_layers
    free = sorted(problem.nodes, key=lambda n: n.name)
    placement: dict[str, tuple[int, int]] = {}
    while free:
        best: tuple[float, list[list[tuple[int, str]]]] = (0.0, [])
        for rate in _rates(free):
            pipelines = [
                _by_region(problem, group) for group in _pack(problem, free, rate, max_hops)
            ]
            score = sum(_pipeline_rate(problem, group, rate) for group in pipelines)
            if score > best[0] * (1 + 1e-12):
                best = (score, pipelines)
        if not best[1]:
            break
        for group in best[1]:
            start = 0
            for k, name in group:
                end = min(num_layers, start + k)
                placement[name] = (start, end)
                start = end
        used = {name for group in best[1] for _, name in group}
        free = [n for n in free if n.name not in used]
    return placement


def _by_region(problem: Problem, group: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Order a pipeline so that it crosses each region boundary once, starting near the source."""

    def key(item: tuple[int, str]) -> tuple[bool, str, int, str]:
        node = problem.node(item[1])
        return (item[1] not in problem.source_links, node.region, -item[0], item[1])

    return sorted(group, key=key)


def _neighbours(
    problem: Problem, placement: dict[str, tuple[int, int]]
) -> list[dict[str, tuple[int, int]]]:
    """Placements one boundary move away: grow/shrink/shift one node's range by a layer or two."""
    out = []
    num_layers = problem.num_layers
    for name in sorted(placement):
        start, end = placement[name]
        cap = problem.node(name).max_layers
        for ds, de in ((-1, 0), (1, 0), (0, 1), (0, -1), (-1, -1), (1, 1), (-2, 0), (0, 2)):
            s, e = start + ds, end + de
            if 0 <= s < e <= num_layers and e - s <= cap and (s, e) != (start, end):
                out.append({**placement, name: (s, e)})
    return out


def local_search(
    problem: Problem, placement: Placement, options: SolveOptions, deadline: float
) -> dict[str, tuple[int, int]]:
    """First-improvement hill climbing on the exact max flow, until no move helps or time is up."""
    current = dict(placement)
    value = max_flow(problem, current, options.partial_inference).value_tokens_per_s
    improved = True
    while improved and time.perf_counter() < deadline:
        improved = False
        for candidate in _neighbours(problem, current):
            if time.perf_counter() >= deadline:
                break
            flow = max_flow(problem, candidate, options.partial_inference).value_tokens_per_s
            if flow > value * (1 + 1e-9):
                current, value, improved = candidate, flow, True
                break
    return current


def evaluate(problem: Problem, placement: Placement, options: SolveOptions) -> float:
    """The exact flow of a placement under the options' rules (hop limit, partial inference)."""
    if options.max_hops is not None:
        from ..hops import hop_limited_flow

        flows = hop_limited_flow(problem, placement, options.max_hops, options.partial_inference)
        return sum(f for (u, _), f in flows.items() if u == SOURCE)
    return max_flow(problem, placement, options.partial_inference).value_tokens_per_s


@register("greedy")
def solve_greedy(problem: Problem, options: SolveOptions) -> SolveResult:
    """The better of equal-rate pipelines and stage packing, then boundary local search."""
    deadline = time.perf_counter() + min(options.time_limit_s, 10.0)
    candidates = [pipeline_placement(problem, options.max_hops), stage_placement(problem)]
    placement = max(candidates, key=lambda candidate: evaluate(problem, candidate, options))
    if options.max_hops is None:
        placement = local_search(problem, placement, options, deadline)
    return SolveResult(placement, "heuristic")
