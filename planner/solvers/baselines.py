"""The baseline placements of the Helix paper (section 9 of the facts sheet): Petals, Swarm,
separate pipelines per GPU kind, and homogeneous (Orca-like) pipelines.

Each is a plain heuristic: it fixes a placement and lets the registry's max flow judge it. Every
solver sorts nodes by name before it does anything, so equal inputs give identical placements; the
one random step (Petals' join order) draws from `random.Random(options.seed)`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..maxflow import max_flow
from ..problem import NodeCapacity, Problem
from . import SolveOptions, SolveResult, register


def _sorted_nodes(problem: Problem) -> list[NodeCapacity]:
    return sorted(problem.nodes, key=lambda node: node.name)


def _max_k(node: NodeCapacity, num_layers: int) -> int:
    return min(node.max_layers, num_layers)


# ----------------------------------------------------------------------------------------------
# Petals


def _petals_start(accumulated: Sequence[float], num_blocks: int) -> int:
    """The window whose sorted per-layer throughputs are lexicographically smallest, i.e. the
    one covering the weakest layers (Petals `block_selection._choose_best_start`); ties: lowest
    start."""
    options = (
        (sorted(accumulated[start : start + num_blocks]), start)
        for start in range(len(accumulated) - num_blocks + 1)
    )
    return min(options)[1]


def petals_placement(problem: Problem, seed: int = 0) -> dict[str, tuple[int, int]]:
    """Nodes join in a seeded shuffle; each takes exactly its max layers where coverage is
    weakest."""
    num_layers = problem.num_layers
    order = _sorted_nodes(problem)
    random.Random(seed).shuffle(order)
    accumulated = [0.0] * num_layers
    placement: dict[str, tuple[int, int]] = {}
    for node in order:
        k = _max_k(node, num_layers)
        start = _petals_start(accumulated, k)
        for layer in range(start, start + k):
            accumulated[layer] += node.tokens_per_s[k - 1]
        placement[node.name] = (start, start + k)
    return placement


@register("petals")
def solve_petals(problem: Problem, options: SolveOptions) -> SolveResult:
    """Petals is judged with its partial-inference links whatever `options.partial_inference`
    says, as in the paper: we compute those flows here and hand them to the registry."""
    placement = petals_placement(problem, options.seed)
    if options.max_hops is not None:
        from ..hops import hop_limited_flow

        edge_flows = hop_limited_flow(problem, placement, options.max_hops, partial=True)
    else:
        edge_flows = max_flow(problem, placement, partial=True).edge_flows
    return SolveResult(placement, "heuristic", edge_flows=edge_flows, partial_inference=True)


# ----------------------------------------------------------------------------------------------
# Swarm


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def swarm_stage_size(problem: Problem) -> int:
    """Layers per stage: a divisor d of L that as many nodes as possible can hold, while those
    nodes still number at least L/d (one per stage); ties go to the largest d (fewest stages).

    With enough nodes this is the largest divisor of L not above the smallest max_layers
    (LLaMA-2-70B on the paper's cluster: d = 4, 20 stages). With too few, d grows until the nodes
    that can hold it cover every stage.
    """
    num_layers = problem.num_layers
    best: tuple[int, int] | None = None  # (number of nodes that can hold d, d)
    for d in _divisors(num_layers):
        holders = sum(1 for node in problem.nodes if _max_k(node, num_layers) >= d)
        if holders >= num_layers // d and (best is None or (holders, d) > best):
            best = (holders, d)
    if best is None:
        raise ValueError(
            f"swarm: no stage size divides the {num_layers} layers so that every "
            f"stage gets a node ({len(problem.nodes)} nodes)"
        )
    return best[1]


def swarm_placement(problem: Problem) -> dict[str, tuple[int, int]]:
    """Nodes sorted by T(d), fastest first, each join the stage with the least throughput so far."""
    num_layers = problem.num_layers
    d = swarm_stage_size(problem)
    stage_tokens_per_s = [0.0] * (num_layers // d)
    holders = [node for node in _sorted_nodes(problem) if _max_k(node, num_layers) >= d]
    holders.sort(key=lambda node: -node.tokens_per_s[d - 1])  # stable: ties stay by name
    placement: dict[str, tuple[int, int]] = {}
    for node in holders:
        stage = min(range(len(stage_tokens_per_s)), key=lambda s: (stage_tokens_per_s[s], s))
        stage_tokens_per_s[stage] += node.tokens_per_s[d - 1]
        placement[node.name] = (stage * d, (stage + 1) * d)
    return placement


@register("swarm")
def solve_swarm(problem: Problem, options: SolveOptions) -> SolveResult:
    """Every link between consecutive stages is available; the max flow decides what is used."""
    return SolveResult(swarm_placement(problem), "heuristic")


# ----------------------------------------------------------------------------------------------
# Separate pipelines (one group per GPU kind)


def _even_split(num_layers: int, num_nodes: int) -> list[int]:
    """Sizes that sum to num_layers and differ by at most one, larger first."""
    base, extra = divmod(num_layers, num_nodes)
    return [base + 1 if i < extra else base for i in range(num_nodes)]


def _chain(names: Sequence[str], sizes: Sequence[int]) -> dict[str, tuple[int, int]]:
    """Consecutive ranges [0, s0), [s0, s0 + s1), ... for one pipeline."""
    placement: dict[str, tuple[int, int]] = {}
    start = 0
    for name, size in zip(names, sizes, strict=True):
        placement[name] = (start, start + size)
        start += size
    return placement


def separate_groups(problem: Problem) -> dict[str, dict[str, tuple[int, int]]]:
    """Per GPU kind: as many full pipelines as its nodes allow, each with the fewest nodes that
    hold L layers under an even split. Kinds that cannot hold the model alone are left out."""
    num_layers = problem.num_layers
    kinds: dict[str, list[NodeCapacity]] = {}
    for node in _sorted_nodes(problem):
        kinds.setdefault(node.gpu, []).append(node)
    groups: dict[str, dict[str, tuple[int, int]]] = {}
    for gpu in sorted(kinds):
        nodes = kinds[gpu]
        max_k = min(_max_k(node, num_layers) for node in nodes)
        per_pipeline = -(-num_layers // max_k)  # ceil: the even split keeps every node <= max_k
        sizes = _even_split(num_layers, per_pipeline)
        group: dict[str, tuple[int, int]] = {}
        for p in range(len(nodes) // per_pipeline):
            chunk = nodes[p * per_pipeline : (p + 1) * per_pipeline]
            group.update(_chain([node.name for node in chunk], sizes))
        if group:
            groups[gpu] = group
    if not groups:
        raise ValueError("separate: no GPU kind can hold the model on its own")
    return groups


def separate_placement(problem: Problem) -> dict[str, tuple[int, int]]:
    placement: dict[str, tuple[int, int]] = {}
    for group in separate_groups(problem).values():
        placement.update(group)
    return placement


@register("separate")
def solve_separate(problem: Problem, options: SolveOptions) -> SolveResult:
    """Each kind is its own sub-cluster and the throughputs add up (as in the paper), so the flow
    is computed per kind: links between kinds carry nothing even where layer boundaries meet."""
    edge_flows: dict[tuple[str, str], float] = {}
    placement: dict[str, tuple[int, int]] = {}
    for group in separate_groups(problem).values():
        placement.update(group)
        if options.max_hops is not None:
            from ..hops import hop_limited_flow

            edge_flows.update(
                hop_limited_flow(problem, group, options.max_hops, options.partial_inference)
            )
        else:
            edge_flows.update(max_flow(problem, group, options.partial_inference).edge_flows)
    return SolveResult(placement, "heuristic", edge_flows=edge_flows)


# ----------------------------------------------------------------------------------------------
# Homogeneous (Orca-like) pipelines


def homogeneous_placement(problem: Problem) -> dict[str, tuple[int, int]]:
    """Kinds by T(max)*max, best first; nodes fill consecutive full pipelines at max layers each.
    The last node of a pipeline is trimmed to what remains; an unfinished pipeline is dropped."""
    num_layers = problem.num_layers

    def kind_key(node: NodeCapacity) -> tuple[float, str, str]:
        rep = kind_rep[node.gpu]
        k = _max_k(rep, num_layers)
        return (-rep.tokens_per_s[k - 1] * k, node.gpu, node.name)

    kind_rep: dict[str, NodeCapacity] = {}
    for node in _sorted_nodes(problem):
        kind_rep.setdefault(node.gpu, node)
    order = sorted(problem.nodes, key=kind_key)
    placement: dict[str, tuple[int, int]] = {}
    pipeline: dict[str, tuple[int, int]] = {}
    start = 0
    for node in order:
        end = min(start + _max_k(node, num_layers), num_layers)
        pipeline[node.name] = (start, end)
        start = end
        if start == num_layers:
            placement.update(pipeline)
            pipeline, start = {}, 0
    return placement


@register("homogeneous")
def solve_homogeneous(problem: Problem, options: SolveOptions) -> SolveResult:
    return SolveResult(homogeneous_placement(problem), "heuristic")


__all__ = [
    "homogeneous_placement",
    "petals_placement",
    "separate_groups",
    "separate_placement",
    "swarm_placement",
    "swarm_stage_size",
]
