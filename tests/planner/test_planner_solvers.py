"""The MILP against brute force, the paper cluster's optimum, determinism, hop limits."""

from __future__ import annotations

import itertools

import pytest
from planner_fixtures import frontier_cluster, problem_of, small_model_dir, tiny

from helix.planner.maxflow import max_flow
from helix.planner.problem import Problem
from helix.planner.solvers import SolveOptions, solve


def brute_force(problem: Problem, partial: bool = False) -> float:
    """Best max flow over every placement (each node unused or any feasible range)."""
    num_layers = problem.num_layers
    choices = []
    for node in problem.nodes:
        ranges = [None] + [
            (s, s + k) for k in range(1, node.max_layers + 1) for s in range(0, num_layers - k + 1)
        ]
        choices.append(ranges)
    best = 0.0
    for combo in itertools.product(*choices):
        placement = {n.name: r for n, r in zip(problem.nodes, combo) if r is not None}
        best = max(best, max_flow(problem, placement, partial).value_tokens_per_s)
    return best


CASES = [
    ({"A": [90.0, 50.0, 30.0, 20.0], "B": [40.0, 35.0]}, [("a1", "A"), ("b1", "B"), ("b2", "B")]),
    (
        {"A": [60.0, 45.0, 25.0], "B": [70.0, 30.0], "C": [25.0]},
        [("a1", "A"), ("b1", "B"), ("c1", "C"), ("c2", "C")],
    ),
    ({"A": [100.0, 48.0, 33.0, 24.0, 19.0]}, [("a1", "A"), ("a2", "A"), ("a3", "A")]),
]


@pytest.mark.parametrize("profiles,nodes", CASES)
def test_milp_equals_brute_force(tmp_path, profiles, nodes) -> None:
    data = tiny(profiles, nodes, model=small_model_dir(tmp_path, 5))
    problem = problem_of(data)
    plan = solve(problem, "milp", SolveOptions(time_limit_s=20))
    expected = brute_force(problem)
    assert plan.throughput_tokens_per_s == pytest.approx(expected, rel=1e-6)
    assert plan.solver.status == "optimal"
    assert plan.upper_bound_tokens_per_s == pytest.approx(expected, rel=1e-5)


def test_milp_proves_the_optimum_of_the_paper_cluster(paper_problem) -> None:
    plan = solve(paper_problem, "milp", SolveOptions(time_limit_s=60))
    # The Gurobi incumbent of the paper was 1289.56 after ~8 minutes; 2045.64 is optimal.
    assert plan.throughput_tokens_per_s == pytest.approx(2045.641, abs=0.01)
    assert plan.upper_bound_tokens_per_s == pytest.approx(plan.throughput_tokens_per_s, rel=1e-6)
    assert plan.solver.status == "optimal"
    layers = sorted((n.start, n.end) for n in plan.nodes.values())
    assert layers[0][0] == 0 and layers[-1][1] == 80


def test_milp_beats_every_baseline_on_the_paper_cluster(paper_problem) -> None:
    milp = solve(paper_problem, "milp", SolveOptions(time_limit_s=30)).throughput_tokens_per_s
    for name in ("greedy", "petals", "swarm", "homogeneous"):
        assert milp >= solve(paper_problem, name).throughput_tokens_per_s - 1e-6


def test_same_input_same_plan(paper_problem) -> None:
    first = solve(paper_problem, "milp", SolveOptions(time_limit_s=30)).to_dict()
    second = solve(paper_problem, "milp", SolveOptions(time_limit_s=30)).to_dict()
    first["solver"].pop("seconds")
    second["solver"].pop("seconds")
    assert first == second


def test_max_hops_is_respected_and_trades_flow(paper_problem) -> None:
    plan = solve(paper_problem, "milp", SolveOptions(time_limit_s=15, max_hops=12))
    assert 0 < plan.stats.hops_max <= 12
    assert plan.throughput_tokens_per_s <= 2045.641 + 1e-6
    assert plan.throughput_tokens_per_s >= 952.1  # better than the paper's Petals with fewer hops


def test_infeasible_hop_limit_is_a_clear_error(paper_problem) -> None:
    with pytest.raises(ValueError, match="max_hops=3 is infeasible"):
        solve(paper_problem, "milp", SolveOptions(time_limit_s=5, max_hops=3))


def test_slow_links_between_regions_are_respected() -> None:
    # Two regions of four nodes; each region can hold the model alone. Links between the regions
    # carry 1e5 / 8 / 1152 = 10.85 hidden states/s each: crossing flows must respect that.
    nodes = [(f"e{i}", "A") for i in range(4)] + [(f"w{i}", "A") for i in range(4)]
    regions = {name: ("east" if name.startswith("e") else "west") for name, _ in nodes}
    data = tiny(
        {"A": [400.0 / k for k in range(1, 16)]},
        nodes,
        regions=regions,
        network={
            "intra_region": {"gbps": 100, "latency_ms": 0.2},
            "inter_region": {"gbps": 0.0001, "latency_ms": 40},
        },
    )
    problem = problem_of(data)
    plan = solve(problem, "milp", SolveOptions(time_limit_s=20))
    for u, v, flow in plan.flows:
        if "coordinator" not in (u, v) and u[0] != v[0]:
            assert flow <= 0.0001e9 / 8 / 1152 + 1e-6
    # Each region alone: 4 nodes x 400 layer-tokens/s over 30 layers = 53.3 tokens/s.
    assert plan.throughput_tokens_per_s >= 2 * 4 * 400 / 30 * 0.98
    for name in ("swarm", "homogeneous", "petals"):
        assert plan.throughput_tokens_per_s >= solve(problem, name).throughput_tokens_per_s - 1e-6


def test_pareto_frontier_trades_flow_for_hops() -> None:
    from helix.planning import pareto

    data = frontier_cluster()
    from helix.config import cluster_from_dict

    frontier = pareto(cluster_from_dict(data), time_limit_s=8)
    assert frontier[0].stats.hops_max == 1  # the big node alone holds all 30 layers
    hops = [p.stats.hops_max for p in frontier]
    flows = [p.throughput_tokens_per_s for p in frontier]
    assert hops == sorted(hops) and flows == sorted(flows)
    assert len(frontier) >= 2
