"""The compiled event loop (`_simcore.c`) against the pure-Python one: the same events, the same
floats, the same state at the end, on every routing policy, both modes, partial inference,
measured tables with per-pass costs, T(k) profiles, KV and seat limits, and the errors."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest

from helix.planner.problem import build_problem
from helix.planner.random_cluster import random_cluster
from helix.planner.sim_compute import LayerCost, LayerTables, add_head_costs
from helix.planner.sim_engine import Simulator
from helix.planner.sim_native import load_core
from helix.planner.sim_workload import LengthSpec, MmppArrivals
from helix.planner.simulate import SimConfig, simulate
from helix.planner.solvers import SolveOptions, solve
from helix.planner.spec import ClusterSpec

SHORT = LengthSpec(prompt_mean_tokens=300, output_mean_tokens=40)


@pytest.fixture(scope="module", autouse=True)
def _core_built() -> None:
    if load_core() is None:
        if os.environ.get("HELIX_NO_SIMCORE"):
            pytest.skip("HELIX_NO_SIMCORE is set: the compiled simulator core is not built")
        pytest.fail(
            "helix.planner._simcore is not built (pip install -e . compiles it with a C "
            "compiler); set HELIX_NO_SIMCORE=1 to skip these tests"
        )


def state(sim: Simulator) -> dict[str, Any]:
    """Everything a run leaves behind, unrounded."""
    rec = sim.rec
    nodes = [
        (n.busy_s, n.kv_area, n.kv_last, n.kv_used, n.kv_peak, n.iterations, n.decode_seqs,
         n.queued, n.seats, n.busy, n.iter_start)
        for n in sim.nodes
    ]  # fmt: skip
    coord = sim.coord
    return {
        "result": sim.result(wall_s=0.0).to_dict(),
        "recorder": (rec.decode_bins, rec.prompt_bins, rec.ttft, rec.step_latency, rec.step_weight),
        "nodes": nodes,
        "clock": (sim.now, sim.last_s, sim.num_events),
        "coordinator": (coord.num_created, coord.num_admitted, coord.num_completed,
                        coord.num_dropped, coord.prefilling, len(coord.waiting),
                        sorted((r.arrival_s, r.prompt, r.output, r.done, r.route.nodes)
                               for r in coord.resident if r.route is not None)),
    }  # fmt: skip


def run(
    cluster: ClusterSpec, plan: Any, config: SimConfig, engine: str,
    tables: dict[str, LayerTables] | None = None,
) -> dict[str, Any]:  # fmt: skip
    config = dataclasses.replace(config, engine=engine)
    sim = Simulator(cluster, build_problem(cluster, config.cost), plan, config, dict(tables or {}))
    if tables:
        add_head_costs(sim.nodes, cluster.model.num_layers, tables)
    sim.run()
    assert sim.engine == engine
    sim.check_integrity()
    return state(sim)


def assert_same(cluster: ClusterSpec, plan: Any, config: SimConfig, **kwargs: Any) -> None:
    python = run(cluster, plan, config, "python", **kwargs)
    native = run(cluster, plan, config, "native", **kwargs)
    assert python["result"]["requests"]["completed"] > 0
    for key in python:
        assert native[key] == python[key], key


@pytest.fixture(scope="module")
def random40() -> tuple[ClusterSpec, Any]:
    cluster = random_cluster(1, num_nodes=(40, 40))
    return cluster, solve(build_problem(cluster), "greedy", SolveOptions(time_limit_s=10))


CONFIGS = {
    "offline": SimConfig(mode="offline", duration_s=20, warmup_s=5, lengths=SHORT),
    "online-swarm": SimConfig(
        mode="online", rate_per_s=3, duration_s=30, warmup_s=5, routing="swarm", lengths=SHORT
    ),
    "online-random": SimConfig(mode="online", rate_per_s=5, duration_s=30, warmup_s=5,
                               routing="random"),
    "offline-shortest-queue-small-batches": SimConfig(
        mode="offline", duration_s=20, warmup_s=5, routing="shortest-queue", max_batch_seqs=8,
        prompt_max_tokens=512, lengths=SHORT,
    ),
    "offline-limited-seats-drains": SimConfig(
        mode="offline", duration_s=60, warmup_s=0, num_requests=200, max_seqs_per_node=4,
        lengths=SHORT,
    ),
    "online-bursty-fixed": SimConfig(
        mode="online", arrivals=MmppArrivals((1.0, 8.0), (5.0, 2.0)), duration_s=30,
        warmup_s=3, lengths=LengthSpec(kind="fixed", prompt_mean_tokens=100,
                                       output_mean_tokens=20),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CONFIGS))
def test_native_engine_matches_python_exactly(random40: tuple[ClusterSpec, Any], name: str) -> None:
    assert_same(*random40, CONFIGS[name])


def test_native_matches_python_under_partial_inference() -> None:
    cluster = random_cluster(3, num_nodes=(30, 30))
    plan = solve(build_problem(cluster), "petals", SolveOptions(partial_inference=True))
    assert plan.partial_inference
    assert_same(cluster, plan, SimConfig(mode="offline", duration_s=20, warmup_s=2, lengths=SHORT))


def test_native_matches_python_on_measured_tables_with_pass_and_head_costs(
    random40: tuple[ClusterSpec, Any],
) -> None:
    cluster, plan = random40
    tables = LayerTables(
        ((1, 0.05), (64, 0.4), (512, 2.5), (2048, 9.0)),
        ((1, 0.3), (8, 0.35), (64, 0.9)),
        head_ms_by_batch=((1, 0.8), (16, 1.5)),
        prompt_pass_ms_by_tokens=((1, 0.3), (512, 4.0)),
        decode_pass_ms_by_batch=((1, 0.2), (8, 1.0)),
    )
    kinds = {node.gpu for node in cluster.nodes}
    config = SimConfig(mode="offline", duration_s=15, warmup_s=2, lengths=SHORT)
    assert_same(cluster, plan, config, tables={kind: tables for kind in kinds})


def test_native_matches_python_on_t_of_k_profiles() -> None:
    from helix.config import cluster_from_dict

    cluster = cluster_from_dict(
        {
            "model": "smollm2-135m",
            "gpus": {"X": {"memory_gb": 16, "bf16_tflops": 50, "hbm_gbps": 300},
                     "Y": {"memory_gb": 8, "bf16_tflops": 20, "hbm_gbps": 200}},
            "nodes": [{"name": f"x{i}", "gpu": "X"} for i in range(3)]
            + [{"name": f"y{i}", "gpu": "Y"} for i in range(3)],
            "network": {"default": {"gbps": 10, "latency_ms": 1.0}},
            "profiles": {
                "X": {"max_layers": 30, "tokens_per_s": [3e4 / k for k in range(1, 31)],
                      "decode_layer_ms": 0.2},
                "Y": {"max_layers": 20, "tokens_per_s": [1e4 / k for k in range(1, 21)]},
            },
        }
    )  # fmt: skip
    plan = solve(build_problem(cluster), "greedy", SolveOptions(time_limit_s=5))
    config = SimConfig(
        mode="online", rate_per_s=4, duration_s=30, warmup_s=2, compute="profile", lengths=SHORT
    )
    assert_same(cluster, plan, config)


def test_requests_that_fit_no_route_raise_the_same_error_in_both_engines(
    random40: tuple[ClusterSpec, Any],
) -> None:
    cluster, plan = random40
    huge = LengthSpec(kind="fixed", prompt_mean_tokens=4_000_000, output_mean_tokens=1,
                      max_prompt_tokens=4_000_000)  # fmt: skip
    config = SimConfig(mode="offline", duration_s=5, warmup_s=0, lengths=huge)
    messages = []
    for engine in ("python", "native"):
        with pytest.raises(ValueError, match="fit no route's KV cache") as info:
            simulate(cluster, plan, dataclasses.replace(config, engine=engine))
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_auto_uses_the_native_core_and_falls_back_for_a_cost_it_does_not_know(
    random40: tuple[ClusterSpec, Any],
) -> None:
    cluster, plan = random40
    config = SimConfig(mode="offline", duration_s=2, warmup_s=0, lengths=SHORT)
    sim = Simulator(cluster, build_problem(cluster), plan, config, {})
    sim.run()
    assert sim.engine == "native"

    class Flat(LayerCost):
        def prompt_s(self, num_tokens: int, sum_sq_tokens: int) -> float:
            return 1e-4 * num_tokens

        def decode_s(self, num_seqs: int, context_tokens: int) -> float:
            return 1e-3 if num_seqs else 0.0

    sim = Simulator(cluster, build_problem(cluster), plan, config, {})
    sim.nodes[0].cost = Flat()
    sim.run()
    assert sim.engine == "python"
    native = dataclasses.replace(config, engine="native")
    sim = Simulator(cluster, build_problem(cluster), plan, native, {})
    sim.nodes[0].cost = Flat()
    with pytest.raises(ValueError, match="engine: native is unavailable: .*Flat"):
        sim.run()


def test_an_error_in_a_routing_policy_propagates_from_the_core(
    random40: tuple[ClusterSpec, Any],
) -> None:
    cluster, plan = random40
    config = SimConfig(mode="offline", duration_s=2, warmup_s=0, lengths=SHORT, engine="native")
    sim = Simulator(cluster, build_problem(cluster), plan, config, {})

    def broken(work: float, feasible: Any) -> None:
        raise RuntimeError("policy broke")

    sim.coord.policy.route = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="policy broke"):
        sim.run()


def test_bad_engine_names_the_field() -> None:
    with pytest.raises(ValueError, match="engine must be one of auto, native, python"):
        SimConfig(engine="fast")
