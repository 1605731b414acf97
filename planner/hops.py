"""Max flow of a placement when every request may cross at most H nodes (an LP on a hop-expanded
graph: copy h of node i carries the flow for which i is the h-th node of the route)."""

from __future__ import annotations

from .maxflow import Placement, node_capacity, placement_edges
from .problem import SINK, SOURCE, Problem


def min_hops(problem: Problem) -> int:
    """Fewest nodes any route needs: the largest ranges laid end to end."""
    covered, hops = 0, 0
    for size in sorted((node.max_layers for node in problem.nodes), reverse=True):
        if covered >= problem.num_layers:
            break
        covered, hops = covered + size, hops + 1
    return hops


def hop_limited_flow(
    problem: Problem, placement: Placement, max_hops: int, partial: bool = False
) -> dict[tuple[str, str], float]:
    """Edge flows (u, v) -> tokens/s of the best flow whose paths have at most `max_hops` nodes."""
    from ortools.math_opt.python import mathopt

    model = mathopt.Model(name="hop_limited_flow")
    # flow[(u, v, h)]: flow on u -> v where u is the h-th node of the route (h = 0: the source).
    flow: dict[tuple[str, str, int], mathopt.Variable] = {}
    into: dict[tuple[str, int], list[mathopt.Variable]] = {}
    out: dict[tuple[str, int], list[mathopt.Variable]] = {}
    for u, v, cap in placement_edges(problem, placement, partial):
        hops = [0] if u == SOURCE else range(1, max_hops + 1 if v == SINK else max_hops)
        arc = []
        for h in hops:
            var = model.add_variable(lb=0.0)
            flow[(u, v, h)] = var
            arc.append(var)
            out.setdefault((u, h), []).append(var)
            into.setdefault((v, h + 1), []).append(var)
        if arc:
            model.add_linear_constraint(sum(arc) <= cap)
    for name in sorted(placement):
        through = []
        for h in range(1, max_hops + 1):
            incoming, outgoing = into.get((name, h), []), out.get((name, h), [])
            if incoming or outgoing:
                model.add_linear_constraint(sum(incoming) - sum(outgoing) == 0)
            through += incoming
        if through:
            model.add_linear_constraint(
                sum(through) <= node_capacity(problem, name, placement[name])
            )
    model.maximize(sum(out.get((SOURCE, 0), [])))
    result = mathopt.solve(model, mathopt.SolverType.GLOP)
    if not result.has_primal_feasible_solution():
        return {}
    values = result.variable_values()
    totals: dict[tuple[str, str], float] = {}
    for (u, v, _), var in flow.items():
        amount = values[var]
        if amount > 1e-9:
            totals[(u, v)] = totals.get((u, v), 0.0) + amount
    return totals
