"""MILP placement on a layer-boundary flow network, aggregated over interchangeable nodes.

The Helix paper's MILP has one start/hold/switch per node and big-M edges (M up to 5e8), so its LP
bound is ~60x the incumbent. We model the flow over *layer boundaries* instead:

    boundary 0 ==arc(s=0,k=8)==> 8 ==arc(8,3)==> 11 ... ==> L     (one arc per node used)

- Nodes with the same GPU, region, NIC and coordinator links form a class c with N_c members;
  y[c,s,k] is an integer count of class-c nodes holding [s, s+k): aggregation breaks symmetry.
- f[c,s,k] <= min(T_c(k), B) * y[c,s,k]: no big-M. B is the layer bound (no node carries more
  than the whole flow), which makes the LP relaxation tight.
- At each boundary and region a hub balances arcs ending there against arcs starting there;
  flows between regions x[r->r',b] are limited by the inter-region link rate.
- With a hop limit every arc and hub gets a hop index (the h-th node of the route).

A link faster than the nodes at both of its ends never binds. When no link binds the model is exact
and its dual bound is a proof. When inter-region links bind, we use a conservative model
(x <= rate * min(#nodes ending, #nodes starting), always realizable) for the incumbent, report the
layer bound, and the gap says how far from proven we stopped. Every placement is re-evaluated with
the exact node-level max flow.
"""

from __future__ import annotations

import datetime
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..maxflow import Placement, layer_bound
from ..problem import NodeCapacity, Problem
from . import Progress, SolveOptions, SolveResult, register
from .greedy import evaluate, local_search, pipeline_placement
from .stages import stage_placement

INF = float("inf")


@dataclass(frozen=True)
class NodeClass:
    key: tuple[object, ...]
    region: str
    members: tuple[str, ...]
    node: NodeCapacity
    source_tokens_per_s: float | None
    sink_tokens_per_s: float | None


def node_classes(problem: Problem, bound: float = INF) -> list[NodeClass]:
    """Group interchangeable nodes: same GPU, region, and NIC and coordinator links alike once
    capped at `bound` (no node carries more than the whole flow, so faster links are equal)."""
    groups: dict[tuple[object, ...], list[NodeCapacity]] = {}
    for node in sorted(problem.nodes, key=lambda n: n.name):
        src = problem.source_links.get(node.name)
        snk = problem.sink_links.get(node.name)
        key = (
            node.region,
            node.gpu,
            node.tokens_per_s,
            min(node.nic_tokens_per_s, bound),
            min(src.tokens_per_s, bound) if src else None,
            min(snk.tokens_per_s, bound) if snk else None,
        )
        groups.setdefault(key, []).append(node)
    return [
        NodeClass(key, nodes[0].region, tuple(n.name for n in nodes), nodes[0], key[4], key[5])  # type: ignore[arg-type]
        for key, nodes in sorted(groups.items(), key=lambda kv: kv[1][0].name)
    ]


def region_links(problem: Problem, bound: float) -> tuple[dict[tuple[str, str], float], bool]:
    """Per region pair: the slowest node-pair rate (inf when no link of the pair binds, 0 when a
    pair lacks a link). Also whether intra-region links never bind and exist everywhere."""

    def top(node: NodeCapacity) -> float:
        return min(bound, node.nic_tokens_per_s, max(node.tokens_per_s))

    rates: dict[tuple[str, str], list[float]] = {}
    nodes = sorted(problem.nodes, key=lambda n: n.name)
    for a in nodes:
        for b in nodes:
            if a.name == b.name:
                continue
            link = problem.links.get((a.name, b.name))
            rate = 0.0 if link is None else link.tokens_per_s
            if rate >= min(top(a), top(b)) * (1 - 1e-9):
                rate = INF
            rates.setdefault((a.region, b.region), []).append(rate)
    exact = all(min(values) == INF for (ra, rb), values in rates.items() if ra == rb)
    return {pair: min(values) for pair, values in rates.items()}, exact


@dataclass
class _Solved:
    placement: dict[str, tuple[int, int]]
    objective: float
    dual_bound: float
    optimal: bool


_LOG_ROW = re.compile(r"^\s*\S?\s+\d+\s+\d+\s+\d+\s+[\d.]+%\s+(\S+)\s+(\S+)")


def _parse_log(line: str) -> tuple[float, float] | None:
    """(bound, incumbent) from a HiGHS branch-and-bound log row."""
    match = _LOG_ROW.match(line)
    if not match:
        return None
    try:
        values = [float(text) for text in match.groups()]
    except ValueError:
        return None
    return values[0], values[1]


def _build_and_solve(
    problem: Problem,
    classes: list[NodeClass],
    links: dict[tuple[str, str], float],
    bound: float,
    max_hops: int | None,
    stop: float,
    floor: float,
    on_log: Callable[[float, float], None] | None,
    hint: Placement | None = None,
) -> _Solved | None:
    from ortools.math_opt.python import mathopt

    num_layers = problem.num_layers
    model = mathopt.Model(name="helix_placement")
    hop_set = [0] if max_hops is None else list(range(1, max_hops + 1))

    def next_hop(h: int) -> int:
        return h if max_hops is None else h + 1

    count: dict[tuple[int, int, int], mathopt.Variable] = {}
    arcs_out: dict[tuple[str, int, int], list[mathopt.Variable]] = {}  # (region, s, hop)
    arcs_in: dict[tuple[str, int, int], list[mathopt.Variable]] = {}  # (region, e, hop)
    ending: dict[tuple[str, int], list[mathopt.Variable]] = {}
    starting: dict[tuple[str, int], list[mathopt.Variable]] = {}
    source_flow: list[mathopt.Variable] = []
    sink_flow: list[mathopt.Variable] = []
    for ci, cls in enumerate(classes):
        node = cls.node
        members = len(cls.members)
        per_class = []
        for k in range(1, node.max_layers + 1):
            for s in range(0, num_layers - k + 1):
                e = s + k
                cap = min(node.tokens_per_s[k - 1], bound)
                if k < num_layers:
                    cap = min(cap, node.nic_tokens_per_s)
                if s == 0:
                    if cls.source_tokens_per_s is None:
                        continue
                    cap = min(cap, cls.source_tokens_per_s)
                if e == num_layers:
                    if cls.sink_tokens_per_s is None:
                        continue
                    cap = min(cap, cls.sink_tokens_per_s)
                hops = [
                    h
                    for h in hop_set
                    if max_hops is None
                    or ((h == 1) == (s == 0) and h - 1 <= s and (e == num_layers or h < max_hops))
                ]
                if not hops:
                    continue
                y = model.add_integer_variable(lb=0, ub=members, name=f"y[{ci},{s},{k}]")
                count[(ci, s, k)] = y
                per_class.append(y)
                ending.setdefault((cls.region, e), []).append(y)
                starting.setdefault((cls.region, s), []).append(y)
                flows = []
                for h in hops:
                    f = model.add_variable(lb=0.0, name=f"f[{ci},{s},{k},{h}]")
                    flows.append(f)
                    if s == 0:
                        source_flow.append(f)
                    else:
                        arcs_out.setdefault((cls.region, s, h), []).append(f)
                    if e == num_layers:
                        sink_flow.append(f)
                    else:
                        arcs_in.setdefault((cls.region, e, h), []).append(f)
                model.add_linear_constraint(sum(flows) <= cap * y)
        if per_class:
            model.add_linear_constraint(sum(per_class) <= members)
    regions = sorted({cls.region for cls in classes})
    for b in range(1, num_layers):
        transfers: dict[tuple[str, str, int], mathopt.Variable] = {}
        for ra in regions:
            for rb in regions:
                rate = links.get((ra, rb), 0.0)
                if ra == rb or rate <= 0:
                    continue
                for h in hop_set:
                    x = model.add_variable(lb=0.0, name=f"x[{ra},{rb},{b},{h}]")
                    transfers[(ra, rb, h)] = x
                if rate == INF:
                    continue
                total = sum(transfers[(ra, rb, h)] for h in hop_set)
                ends, starts = ending.get((ra, b), []), starting.get((rb, b), [])
                # Conservative: min(#ending, #starting) node pairs, each at `rate`.
                model.add_linear_constraint(total <= rate * sum(ends))
                model.add_linear_constraint(total <= rate * sum(starts))
        for r in regions:
            for h in hop_set:
                inflow = arcs_in.get((r, b, h), [])
                outflow = arcs_out.get((r, b, next_hop(h)), [])
                sent = [x for (ra, _, hh), x in transfers.items() if ra == r and hh == h]
                received = [x for (_, rb, hh), x in transfers.items() if rb == r and hh == h]
                if inflow or outflow or sent or received:
                    model.add_linear_constraint(
                        sum(inflow) + sum(received) - sum(outflow) - sum(sent) == 0
                    )
    total_flow = sum(source_flow)
    model.add_linear_constraint(total_flow - sum(sink_flow) == 0)
    model.add_linear_constraint(total_flow <= bound)
    if floor > 0:
        # Valid cut when the model is exact: the optimum is at least the warm-start flow.
        model.add_linear_constraint(total_flow >= floor * (1 - 1e-6))
    model.maximize(total_flow)

    def on_messages(lines: list[str]) -> None:
        for line in lines:
            parsed = _parse_log(line)
            if parsed and on_log is not None:
                on_log(*parsed)

    params = mathopt.SolveParameters(
        # The clock runs from here: building the model took part of the budget.
        time_limit=datetime.timedelta(seconds=max(stop - time.perf_counter(), 0.5)),
        enable_output=False,
        relative_gap_tolerance=1e-6,
    )
    model_params = None
    if hint:
        member_class = {name: ci for ci, cls in enumerate(classes) for name in cls.members}
        counts: dict[tuple[int, int, int], int] = {}
        for name, (s, e) in hint.items():
            key = (member_class[name], s, e - s)
            counts[key] = counts.get(key, 0) + 1
        if all(key in count for key in counts):
            values = {var: float(counts.get(key, 0)) for key, var in count.items()}
            model_params = mathopt.ModelSolveParameters(
                solution_hints=[mathopt.SolutionHint(variable_values=values)]
            )
    result = mathopt.solve(
        model,
        mathopt.SolverType.HIGHS,
        params=params,
        msg_cb=on_messages,
        model_params=model_params,
    )
    if not result.has_primal_feasible_solution():
        return None
    values = result.variable_values()
    placement: dict[str, tuple[int, int]] = {}
    free = {ci: list(cls.members) for ci, cls in enumerate(classes)}
    for (ci, s, k), var in sorted(count.items()):
        for _ in range(int(round(values[var]))):
            placement[free[ci].pop(0)] = (s, s + k)
    dual = result.termination.objective_bounds.dual_bound
    return _Solved(
        placement,
        result.objective_value(),
        min(dual, bound) if math.isfinite(dual) else bound,
        result.termination.reason == mathopt.TerminationReason.OPTIMAL,
    )


def warm_starts(
    problem: Problem, options: SolveOptions
) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """Every fast heuristic's placement: the greedy pipelines and the paper's baselines."""
    from . import baselines

    candidates: list[tuple[str, dict[str, tuple[int, int]]]] = [
        ("greedy", pipeline_placement(problem, options.max_hops)),
        ("stages", stage_placement(problem)),
    ]
    makers: list[tuple[str, Callable[[], dict[str, tuple[int, int]]]]] = [
        ("homogeneous", lambda: baselines.homogeneous_placement(problem)),
        ("separate", lambda: baselines.separate_placement(problem)),
        ("swarm", lambda: baselines.swarm_placement(problem)),
        ("petals", lambda: baselines.petals_placement(problem, options.seed)),
    ]
    for name, make in makers:
        try:
            candidates.append((name, make()))
        except ValueError:
            continue  # that baseline does not apply to this cluster
    return candidates


@register("milp")
def solve_milp(problem: Problem, options: SolveOptions) -> SolveResult:
    started = time.perf_counter()
    # Leave a moment for the final evaluation and the plan, so that the whole solve fits.
    deadline = started + options.time_limit_s - min(1.0, 0.05 * options.time_limit_s)
    bound = layer_bound(problem)
    report = options.progress
    best: dict[str, tuple[int, int]] = {}
    best_value, source = -1.0, ""
    for name, candidate in warm_starts(problem, options):
        value = evaluate(problem, candidate, options)
        if value > best_value:
            best, best_value, source = candidate, value, name
    incumbent = [best_value]

    def on_log(dual: float, found: float) -> None:
        if report is not None:
            report(
                Progress(
                    time.perf_counter() - started,
                    max(incumbent[0], found),
                    min(dual, bound),
                    "milp",
                )
            )

    if report is not None:
        report(Progress(time.perf_counter() - started, best_value, bound, f"warm start: {source}"))
    classes = node_classes(problem, bound)
    links, intra_exact = region_links(problem, bound)
    # The conservative model is exact when no inter-region link binds; then its bound is valid.
    binding = any(rate < INF for (ra, rb), rate in links.items() if ra != rb)
    exact = intra_exact and not binding
    proven = bound
    optimal = False
    budget = deadline - time.perf_counter()
    solved = _build_and_solve(
        problem,
        classes,
        links,
        bound,
        options.max_hops,
        time.perf_counter() + budget * (1.0 if exact else 0.7),
        best_value if exact else 0.0,
        on_log,
        hint=best,
    )
    if solved is not None:
        value = evaluate(problem, solved.placement, options)
        if value > best_value:
            best, best_value, source = solved.placement, value, "milp"
            incumbent[0] = value
        if exact:
            proven = min(proven, max(solved.dual_bound, best_value))
            optimal = solved.optimal
    if not optimal and options.max_hops is None and time.perf_counter() < deadline:
        best = local_search(problem, best, options, deadline)
        best_value = evaluate(problem, best, options)
    optimal = optimal or best_value >= proven * (1 - 1e-6)
    if report is not None:
        report(Progress(time.perf_counter() - started, best_value, proven, "done"))
    status = (
        "optimal" if optimal else ("time_limit" if time.perf_counter() >= deadline else "feasible")
    )
    # With partial inference the strict-boundary MILP bound does not hold; the layer bound does.
    return SolveResult(best, status, None if options.partial_inference else proven)
