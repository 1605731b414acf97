"""The simulator against numbers we can work out by hand: one-node bounds, unloaded latency,
KV capacity, determinism, and the errors a bad plan or config must raise."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from helix.config import cluster_from_dict
from helix.planner.plan import Plan, SolverInfo, build_plan
from helix.planner.problem import build_problem
from helix.planner.profile import DEFAULT_COST_MODEL
from helix.planner.sim_compute import RooflineCost
from helix.planner.sim_engine import Simulator
from helix.planner.sim_routing import routing_names
from helix.planner.sim_workload import LengthSpec, MmppArrivals
from helix.planner.simulate import SimConfig, simulate
from helix.planner.spec import ClusterSpec, SpecError

FIXED = LengthSpec(kind="fixed")


def cluster(nodes: list[tuple[str, str]], latency_ms: float = 0.0, **extra: Any) -> ClusterSpec:
    return cluster_from_dict(
        {
            "model": extra.pop("model", "llama-3-8b"),
            "nodes": [{"name": name, "gpu": gpu} for name, gpu in nodes],
            "network": {"default": {"gbps": 100, "latency_ms": latency_ms}},
            **extra,
        }
    )


def plan_of(spec: ClusterSpec, placement: dict[str, tuple[int, int]]) -> Plan:
    problem = build_problem(spec)
    return build_plan(problem, placement, solver=SolverInfo("test", 0.0, "heuristic"), bound=0.0)


def run(spec: ClusterSpec, plan: Plan, config: SimConfig) -> Simulator:
    sim = Simulator(spec, build_problem(spec, config.cost), plan, config, {})
    sim.run()
    sim.check_integrity()
    return sim


def test_one_node_runs_at_the_cost_models_lockstep_bound() -> None:
    # 256 requests of 750 + 240 tokens on one H100 holding all 32 layers. Admitting all at once
    # with a prompt cap above 256 * 750 makes them prefill together and decode in lockstep, so
    # one cycle is one prefill of 256 prompts plus 240 decode steps of 256 sequences, through
    # 32 layers.
    spec = cluster([("h0", "H100")])
    plan = plan_of(spec, {"h0": (0, 32)})
    config = SimConfig(
        lengths=FIXED,
        max_seqs_per_node=256,
        max_prefilling=256,
        prompt_max_tokens=10**6,
        duration_s=300,
        warmup_s=30,
    )
    result = simulate(spec, plan, config)
    cost = RooflineCost(spec.gpus["H100"], spec.model, DEFAULT_COST_MODEL)
    batch = 256
    cycle_s = 32 * (
        cost.prompt_s(batch * 750, batch * 750**2)
        + sum(cost.decode_s(batch, batch * (750 + step)) for step in range(240))
    )
    assert result.decode_tokens_per_s == pytest.approx(batch * 240 / cycle_s, rel=0.02)
    assert result.total_tokens_per_s == pytest.approx(batch * 990 / cycle_s, rel=0.05)
    assert result.nodes[0].utilisation > 0.99
    assert result.nodes[0].mean_decode_batch > 0.95 * batch * 240 / 241


def test_profile_compute_runs_a_lone_node_at_its_t_of_k() -> None:
    # compute="profile" reads T(k) literally, so a busy node delivers exactly the plan's flow.
    spec = cluster(
        [("n0", "X")],
        model="smollm2-135m",
        gpus={"X": {"memory_gb": 16, "bf16_tflops": 50, "hbm_gbps": 300}},
        profiles={"X": {"max_layers": 30, "tokens_per_s": [30000.0 / k for k in range(1, 31)]}},
    )
    plan = plan_of(spec, {"n0": (0, 30)})
    assert plan.throughput_tokens_per_s == pytest.approx(1000.0)
    result = simulate(spec, plan, SimConfig(compute="profile", duration_s=200, warmup_s=20))
    assert result.total_tokens_per_s == pytest.approx(1000.0, rel=0.03)


def two_stage() -> tuple[ClusterSpec, Plan]:
    """Two interchangeable pipelines: a0/a1 hold [0, 16), b0/b1 hold [16, 32)."""
    spec = cluster([(n, "A100-40GB") for n in ("a0", "a1", "b0", "b1")], latency_ms=1.0)
    placement = {"a0": (0, 16), "a1": (0, 16), "b0": (16, 32), "b1": (16, 32)}
    return spec, plan_of(spec, placement)


@pytest.mark.parametrize("routing", routing_names())
def test_every_routing_policy_delivers_every_request(routing: str) -> None:
    spec, plan = two_stage()
    config = SimConfig(
        routing=routing,
        mode="online",
        rate_per_s=4.0,
        num_requests=40,
        duration_s=10_000,
        warmup_s=0,
        seed=3,
    )
    sim = run(spec, plan, config)
    result = sim.result(wall_s=0.0)
    assert (result.num_completed, result.num_waiting, result.num_dropped) == (40, 0, 0)
    assert result.prompt_latency.count == 40
    assert all(node.kv_used == 0 and node.seats == 0 for node in sim.nodes)
    assert all(node.iterations > 0 for node in sim.nodes)  # both pipelines carried requests


def test_kv_admission_never_exceeds_capacity_and_queues_the_rest() -> None:
    # 8 GB GPUs holding 8 layers each: KV room for ~100 requests of 990 tokens per node.
    spec = cluster(
        [(f"s{i}", "small") for i in range(4)],
        gpus={"small": {"memory_gb": 8, "bf16_tflops": 100, "hbm_gbps": 500}},
    )
    plan = plan_of(spec, {f"s{i}": (8 * i, 8 * i + 8) for i in range(4)})
    config = SimConfig(lengths=FIXED, max_prefilling=10_000, duration_s=60, warmup_s=5)
    sim = run(spec, plan, config)
    result = sim.result(wall_s=0.0)
    per_request = 990 * 8
    for node in sim.nodes:
        assert node.kv_peak <= node.kv_capacity
        assert node.kv_peak > node.kv_capacity - per_request  # KV was what stopped admission
    assert result.num_waiting == 1  # offline: the next request waits at the head of the queue
    assert result.num_completed > 0


def test_online_low_rate_matches_unloaded_latency() -> None:
    spec = cluster([("h0", "H100"), ("h1", "H100")], latency_ms=1.0)
    plan = plan_of(spec, {"h0": (0, 16), "h1": (16, 32)})
    config = SimConfig(
        mode="online",
        rate_per_s=0.01,
        num_requests=25,
        lengths=FIXED,
        duration_s=100_000,
        warmup_s=0,
    )
    result = simulate(spec, plan, config)
    cost = RooflineCost(spec.gpus["H100"], spec.model, DEFAULT_COST_MODEL)
    hidden_bytes, link_bps = spec.model.activation_bytes_per_token, 100e9 / 8
    links_s = 3 * 1e-3  # coordinator -> h0 -> h1 -> coordinator
    prompt_s = links_s + 32 * cost.prompt_s(750, 750**2) + 750 * hidden_bytes / link_bps
    decode_s = links_s + sum(32 * cost.decode_s(1, 750 + i) for i in range(240)) / 240
    assert result.num_completed == 25
    assert result.prompt_latency.mean_s == pytest.approx(prompt_s, rel=0.03)
    assert result.decode_latency.mean_s == pytest.approx(decode_s, rel=0.03)
    assert result.decode_latency.p99_s < 1.5 * decode_s


def test_same_seed_same_result_other_seed_other_result() -> None:
    spec, plan = two_stage()
    for routing in ("random", "maxflow"):
        config = SimConfig(
            routing=routing, mode="online", rate_per_s=3.0, duration_s=60, warmup_s=10, seed=7
        )
        first = simulate(spec, plan, config).to_dict()
        assert simulate(spec, plan, config).to_dict() == first
        other = simulate(spec, plan, dataclasses.replace(config, seed=8)).to_dict()
        assert other != first


def test_bursty_arrivals_average_their_rates() -> None:
    arrivals = MmppArrivals(rates_per_s=(4.0, 0.5), mean_dwell_s=(5.0, 15.0))
    assert arrivals.mean_rate_per_s == pytest.approx((4 * 5 + 0.5 * 15) / 20)
    clock, t, count = arrivals.start(seed=1), 0.0, 0
    while (t := clock.next_after(t)) < 20_000:
        count += 1
    assert count / 20_000 == pytest.approx(arrivals.mean_rate_per_s, rel=0.05)
    spec, plan = two_stage()
    result = simulate(
        spec, plan, SimConfig(mode="online", arrivals=arrivals, duration_s=60, warmup_s=0)
    )
    assert result.num_admitted > 0


def test_plan_naming_an_unknown_node_is_rejected() -> None:
    spec, plan = two_stage()
    nodes = dict(plan.nodes)
    nodes["ghost"] = nodes.pop("a0")
    with pytest.raises(SpecError) as err:
        simulate(spec, dataclasses.replace(plan, nodes=nodes))
    assert err.value.path == "plan.nodes.ghost"


def test_plan_that_does_not_cover_the_model_is_rejected() -> None:
    spec, plan = two_stage()
    nodes = {name: node for name, node in plan.nodes.items() if name.startswith("a")}
    with pytest.raises(SpecError) as err:
        simulate(spec, dataclasses.replace(plan, nodes=nodes, flows=[]))
    assert err.value.path == "plan.nodes"
    assert "stops at layer 16" in str(err.value)


def test_plan_flows_and_model_are_checked() -> None:
    spec, plan = two_stage()
    bad_flow = [("a0", "a1", 10.0), *plan.flows]
    with pytest.raises(SpecError) as err:
        simulate(spec, dataclasses.replace(plan, flows=bad_flow))
    assert err.value.path == "plan.flows[0]"
    with pytest.raises(SpecError) as err:
        simulate(spec, dataclasses.replace(plan, model="llama-2-70b"))
    assert err.value.path == "plan.model"
    too_deep = dict(plan.nodes)
    too_deep["a0"] = dataclasses.replace(too_deep["a0"], start=0, end=40)
    with pytest.raises(SpecError, match="plan.nodes.a0.layers"):
        simulate(spec, dataclasses.replace(plan, nodes=too_deep))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mode": "online", "rate_per_s": -1.0}, "rate_per_s"),
        ({"mode": "online"}, "rate_per_s"),
        ({"routing": "fastest"}, "routing"),
        ({"duration_s": 0}, "duration_s"),
        ({"warmup_s": -1}, "warmup_s"),
        ({"num_requests": 0}, "num_requests"),
        ({"compute": "guess"}, "compute"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SimConfig(**kwargs)


def test_bad_lengths_and_arrivals_name_the_field() -> None:
    with pytest.raises(ValueError, match="lengths.kind"):
        LengthSpec(kind="uniform")
    with pytest.raises(ValueError, match="mean_dwell_s"):
        MmppArrivals((1.0, 2.0), (1.0, 0.0))
