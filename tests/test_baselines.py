"""Baseline placements: the paper's figures on its 24-node cluster, and tiny hand-checked ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from helix.config import cluster_from_dict, load_cluster
from helix.planner.maxflow import max_flow
from helix.planner.problem import Problem, build_problem
from helix.planner.solvers import SolveOptions, solve, solver_names
from helix.planner.solvers.baselines import (
    homogeneous_placement,
    petals_placement,
    separate_placement,
    swarm_placement,
    swarm_stage_size,
)

PAPER_CLUSTER = Path("/work/shared/data/clusters/helix-single24.yaml")


@pytest.fixture(scope="module")
def paper() -> Problem:
    if not PAPER_CLUSTER.exists():
        pytest.skip(f"{PAPER_CLUSTER} not available")
    return build_problem(load_cluster(PAPER_CLUSTER))


def _tiny(groups: list[tuple[str, str, int, int, float]]) -> Problem:
    """smollm2-135m (30 layers); each group is (name, gpu, count, max_layers, k*T(k)), so
    T(k) = kT/k and every kind has a hand-checkable profile."""
    profiles: dict[str, Any] = {}
    nodes = []
    for name, gpu, count, max_layers, k_tokens in groups:
        profiles[gpu] = {"max_layers": max_layers,
                         "tokens_per_s": [k_tokens / k for k in range(1, max_layers + 1)]}
        nodes.append({"name": name, "gpu": gpu, "count": count})
    return build_problem(cluster_from_dict({
        "model": "smollm2-135m", "nodes": nodes, "profiles": profiles,
        "network": {"default": {"gbps": 100, "latency_ms": 1}},
    }))


def test_registered() -> None:
    assert {"petals", "swarm", "separate", "homogeneous"} <= set(solver_names())


# ---------------------------------------------------------------------------------------------
# The paper's 24-node cluster (4 A100, 8 L4, 12 T4; LLaMA-2-70B).


def test_paper_swarm(paper: Problem) -> None:
    assert swarm_stage_size(paper) == 4  # 20 stages of 4 layers
    plan = solve(paper, "swarm")
    assert plan.throughput_tokens_per_s == pytest.approx(757.9, abs=0.5)
    assert plan.solver.status == "heuristic"


def test_paper_homogeneous(paper: Problem) -> None:
    plan = solve(paper, "homogeneous")
    assert plan.throughput_tokens_per_s == pytest.approx(531.7, abs=0.5)
    assert len(homogeneous_placement(paper)) == 9  # 4 A100 + 5 L4, the last trimmed to 4 layers


def test_paper_petals(paper: Problem) -> None:
    placement = petals_placement(paper, seed=0)
    for node in paper.nodes:
        start, end = placement[node.name]
        assert end - start == min(node.max_layers, paper.num_layers)
    plan = solve(paper, "petals", SolveOptions(seed=0))
    partial_flow = max_flow(paper, placement, partial=True).value_tokens_per_s
    assert plan.throughput_tokens_per_s > 0
    assert plan.throughput_tokens_per_s == pytest.approx(partial_flow, abs=1e-6)
    # NOTE: seed 0 happens to reproduce the paper's own shuffle result (the A100 T(max)).
    assert plan.throughput_tokens_per_s == pytest.approx(952.1, abs=0.5)


def test_paper_separate_cannot_hold(paper: Problem) -> None:
    # 4 x 12, 8 x 7 and 12 x 4 layers are all short of 80: the paper forced memory limits here.
    with pytest.raises(ValueError, match="no GPU kind can hold the model on its own"):
        solve(paper, "separate")


# ---------------------------------------------------------------------------------------------
# Petals


def test_petals_windows_cover_weakest_layers() -> None:
    # Three identical nodes of 20 layers (T(20) = 30): the first takes [0, 20); the second the
    # window with ten empty layers, [10, 30); the third sees every window tie and takes [0, 20).
    problem = _tiny([("n", "L4", 3, 20, 600.0)])
    placement = petals_placement(problem, seed=0)
    assert sorted(placement.values()) == [(0, 20), (0, 20), (10, 30)]
    # Only the partial link (0, 20) -> (10, 30) joins source to sink: flow = T(20) = 30, and it is
    # reported even when the options ask for no partial inference.
    plan = solve(problem, "petals", SolveOptions(partial_inference=False))
    assert plan.throughput_tokens_per_s == pytest.approx(30.0)
    assert max_flow(problem, placement, partial=False).value_tokens_per_s == 0.0


def test_petals_seeded_and_order_independent() -> None:
    groups = [("a", "A100-40GB", 2, 12, 600.0), ("l", "L4", 3, 8, 320.0), ("t", "T4", 4, 5, 150.0)]
    problem = _tiny(groups)
    reordered = _tiny(list(reversed(groups)))
    assert petals_placement(problem, seed=3) == petals_placement(reordered, seed=3)
    assert petals_placement(problem, seed=3) == petals_placement(problem, seed=3)
    for seed in range(5):
        for name, (start, end) in petals_placement(problem, seed).items():
            assert end - start == problem.node(name).max_layers


def test_petals_with_hop_limit_runs() -> None:
    problem = _tiny([("n", "L4", 3, 20, 600.0)])
    plan = solve(problem, "petals", SolveOptions(max_hops=2))
    assert plan.throughput_tokens_per_s == pytest.approx(30.0, abs=1e-3)


# ---------------------------------------------------------------------------------------------
# Swarm


def test_swarm_greedy_stages() -> None:
    # min max_layers 6 -> 5 stages of 6. T(6): A100 100, L4 30. The A100s take stages 0 and 1,
    # three L4 stages 2-4, and the fourth L4 joins the weakest, lowest stage (2).
    problem = _tiny([("a", "A100-40GB", 2, 10, 600.0), ("l", "L4", 4, 6, 180.0)])
    assert swarm_placement(problem) == {
        "a-0": (0, 6), "a-1": (6, 12),
        "l-0": (12, 18), "l-1": (18, 24), "l-2": (24, 30), "l-3": (12, 18),
    }
    assert solve(problem, "swarm").throughput_tokens_per_s == pytest.approx(30.0)


def test_swarm_too_few_nodes_grows_stages() -> None:
    # 5 layers would need 6 stages but there are 3 nodes; 15-layer stages fit the two big ones.
    problem = _tiny([("a", "A100-40GB", 2, 20, 600.0), ("t", "T4", 1, 5, 150.0)])
    assert swarm_stage_size(problem) == 15
    assert swarm_placement(problem) == {"a-0": (0, 15), "a-1": (15, 30)}
    assert solve(problem, "swarm").throughput_tokens_per_s == pytest.approx(40.0)


def test_swarm_impossible() -> None:
    problem = _tiny([("a", "A100-40GB", 2, 14, 600.0), ("t", "T4", 1, 4, 150.0)])
    with pytest.raises(ValueError, match="swarm"):
        solve(problem, "swarm")


# ---------------------------------------------------------------------------------------------
# Separate pipelines


def test_separate_per_kind_pipelines() -> None:
    # A100 x3 (max 12): one pipeline of 3 at 10 layers. L4 x5 (max 8): pipelines of 4 at 8,8,7,7,
    # so one pipeline and l-4 unused. T4 x2 (max 10): 20 < 30 layers, unused.
    problem = _tiny([("a", "A100-40GB", 3, 12, 600.0), ("l", "L4", 5, 8, 320.0),
                     ("t", "T4", 2, 10, 150.0)])
    assert separate_placement(problem) == {
        "a-0": (0, 10), "a-1": (10, 20), "a-2": (20, 30),
        "l-0": (0, 8), "l-1": (8, 16), "l-2": (16, 23), "l-3": (23, 30),
    }
    plan = solve(problem, "separate")
    assert plan.throughput_tokens_per_s == pytest.approx(60.0 + 40.0)
    for u, v, _ in plan.flows:
        if "coordinator" not in (u, v):
            assert u[0] == v[0], f"flow crosses kinds: {u} -> {v}"


def test_separate_two_pipelines_of_one_kind() -> None:
    problem = _tiny([("l", "L4", 7, 10, 300.0)])  # 3 nodes per pipeline; l-6 left over
    placement = separate_placement(problem)
    assert sorted(placement) == [f"l-{i}" for i in range(6)]
    assert solve(problem, "separate").throughput_tokens_per_s == pytest.approx(60.0)


def test_separate_no_kind_holds_model() -> None:
    problem = _tiny([("a", "A100-40GB", 2, 12, 600.0), ("l", "L4", 2, 8, 320.0)])
    with pytest.raises(ValueError, match="no GPU kind can hold the model on its own"):
        solve(problem, "separate")


# ---------------------------------------------------------------------------------------------
# Homogeneous


def test_homogeneous_fills_pipelines_by_kind() -> None:
    # Kinds by T(max)*max: A100 600, L4 320, T4 150. Pipeline 1: a-0, a-1, l-0 trimmed to 6.
    # Pipeline 2: l-1, l-2, t-0, t-1, t-2 trimmed to 4. t-3 cannot finish a third one.
    problem = _tiny([("t", "T4", 4, 5, 150.0), ("l", "L4", 3, 8, 320.0),
                     ("a", "A100-40GB", 2, 12, 600.0)])
    assert homogeneous_placement(problem) == {
        "a-0": (0, 12), "a-1": (12, 24), "l-0": (24, 30),
        "l-1": (0, 8), "l-2": (8, 16), "t-0": (16, 21), "t-1": (21, 26), "t-2": (26, 30),
    }
    # min(50, 50, 53.3) + min(40, 40, 30, 30, 37.5)
    plan = solve(problem, "homogeneous")
    assert plan.throughput_tokens_per_s == pytest.approx(80.0)
    assert solve(problem, "homogeneous", SolveOptions(max_hops=5)).throughput_tokens_per_s \
        == pytest.approx(80.0, abs=1e-3)


@pytest.mark.parametrize("solver", ["petals", "swarm", "separate", "homogeneous"])
def test_deterministic(solver: str) -> None:
    problem = _tiny([("a", "A100-40GB", 3, 12, 600.0), ("l", "L4", 5, 8, 320.0)])
    first = solve(problem, solver).to_dict()
    second = solve(problem, solver).to_dict()
    first["solver"].pop("seconds")
    second["solver"].pop("seconds")
    assert first == second
