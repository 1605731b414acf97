"""Flow values on clusters small enough to check by hand."""

from __future__ import annotations

import pytest
from planner_fixtures import problem_of, tiny

from helix.config import cluster_from_dict
from helix.planner.maxflow import layer_bound, max_flow, paper_bound
from helix.planner.problem import build_problem

# smollm2-135m has 30 layers.


def test_single_pipeline_is_its_slowest_node() -> None:
    p = problem_of(tiny({"A": [300.0] * 20, "B": [100.0] * 20}, [("a", "A"), ("b", "B")]))
    flow = max_flow(p, {"a": (0, 15), "b": (15, 30)})
    assert flow.value_tokens_per_s == pytest.approx(100.0)
    assert flow.node_flows == pytest.approx({"a": 100.0, "b": 100.0})


def test_parallel_nodes_add_up() -> None:
    p = problem_of(
        tiny({"A": [300.0] * 30, "B": [100.0] * 20}, [("a", "A"), ("b1", "B"), ("b2", "B")])
    )
    # a holds the first 10 layers; b1 and b2 each hold the remaining 20 in parallel.
    flow = max_flow(p, {"a": (0, 10), "b1": (10, 30), "b2": (10, 30)})
    assert flow.value_tokens_per_s == pytest.approx(200.0)


def test_mismatched_boundaries_carry_nothing_without_partial_inference() -> None:
    p = problem_of(tiny({"A": [100.0] * 20}, [("a", "A"), ("b", "A")]))
    placement = {"a": (0, 16), "b": (14, 30)}
    assert max_flow(p, placement).value_tokens_per_s == 0
    # With partial inference b runs only [16, 30) for requests that come from a.
    assert max_flow(p, placement, partial=True).value_tokens_per_s == pytest.approx(100.0)


def test_link_capacity_limits_the_flow() -> None:
    # 0.01 Gbit/s between nodes carries 1.25e6 / (576 * 2) = 1085.07 hidden states per second.
    data = tiny(
        {"A": [5000.0] * 20},
        [("a", "A"), ("b", "A")],
        network={
            "default": {"gbps": 100, "latency_ms": 1},
            "links": [{"between": ["a", "b"], "gbps": 0.01, "latency_ms": 5}],
        },
    )
    p = problem_of(data)
    assert max_flow(p, {"a": (0, 15), "b": (15, 30)}).value_tokens_per_s == pytest.approx(
        0.01e9 / 8 / (576 * 2), rel=1e-5
    )


def test_nic_limits_a_node_moving_hidden_states() -> None:
    data = tiny({"A": [5000.0] * 20}, [("a", "A"), ("b", "A")])
    data["nodes"][0]["nic_gbps"] = 0.001  # 108.5 hidden states/s
    p = problem_of(data)
    assert max_flow(p, {"a": (0, 15), "b": (15, 30)}).value_tokens_per_s == pytest.approx(
        0.001e9 / 8 / 1152, rel=1e-5
    )


def test_paper_cluster_bounds_and_baseline_fixtures(paper_problem) -> None:
    assert paper_bound(paper_problem) == pytest.approx(2803.86, abs=0.01)
    # Every layer carries F and no node carries more than F: 4 A100 x 8 layers at T(8) = 2045.641.
    assert layer_bound(paper_problem) == pytest.approx(2045.641, abs=0.01)
    # One node's capacity caps a one-pipeline placement: the paper's baseline values.
    names = sorted(n.name for n in paper_problem.nodes if n.gpu == "A100")
    placement = {name: (12 * i, 12 * i + 12) for i, name in enumerate(names)}
    l4 = sorted(n.name for n in paper_problem.nodes if n.gpu == "L4")
    start = 48
    for name in l4:
        if start >= 80:
            break
        placement[name] = (start, min(80, start + 7))
        start += 7
    assert max_flow(paper_problem, placement).value_tokens_per_s == pytest.approx(531.703, abs=0.01)


def test_roofline_capacity_falls_per_layer_as_k_grows() -> None:
    cluster = cluster_from_dict(
        {
            "model": "llama-2-70b",
            "nodes": [{"name": "a", "gpu": "A100-80GB", "count": 4}],
            "network": {"default": {"gbps": 100}},
        }
    )
    node = build_problem(cluster).nodes[0]
    per_layer = [k * t for k, t in enumerate(node.tokens_per_s, start=1)]
    assert node.max_layers == 23  # 40 GB of weights at 1.71 GB per layer
    assert all(a >= b * (1 - 1e-9) for a, b in zip(per_layer, per_layer[1:]))
    assert all(a > b for a, b in zip(node.tokens_per_s, node.tokens_per_s[1:]))
