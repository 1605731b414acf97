"""The sharded runtime: node processes over ZeroMQ against the one-node engine."""

from __future__ import annotations

import random
import socket
import time

import pytest

from helix import LLM, SamplingParams
from helix.config import cluster_from_dict
from helix.planner.plan import SolverInfo, build_plan
from helix.planner.problem import build_problem
from helix.runtime.cluster_launch import LocalCluster

PARAMS = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def cluster_of(model, names, addresses=None, big=()):
    """Nodes of kind X (T(k) = 100/k); those in `big` are twice as fast."""
    nodes = [
        {
            "name": n,
            "gpu": "Big" if n in big else "X",
            **({"address": addresses[n]} if addresses else {}),
        }
        for n in names
    ]
    spec = {"memory_gb": 16, "bf16_tflops": 10, "hbm_gbps": 100}
    data = {
        "model": str(model),
        "gpus": {"X": spec, "Big": spec},
        "nodes": nodes,
        "network": {"default": {"gbps": 10, "latency_ms": 1}},
        "profiles": {
            "X": {"max_layers": 4, "tokens_per_s": [100.0, 50.0, 33.0, 25.0]},
            "Big": {"max_layers": 4, "tokens_per_s": [200.0, 100.0, 66.0, 50.0]},
        },
    }
    if addresses:
        data["coordinator"] = {"address": addresses["coordinator"]}
    return cluster_from_dict(data)


def plan_of(cluster, placement, partial=False):
    return build_plan(
        build_problem(cluster),
        placement,
        solver=SolverInfo("manual", 0, "manual"),
        bound=0,
        partial=partial,
    )


def batch(seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"prompt_token_ids": [rng.randrange(3, 211) for _ in range(n)]}
        for n in (5, 1, 23, 12, 17, 40)
    ]


@pytest.fixture(scope="module")
def reference(tiny_llama) -> list[list[int]]:
    outs = LLM(str(tiny_llama)).generate(batch(), PARAMS)
    ids = [o.outputs[0].token_ids for o in outs]
    assert len({tuple(x) for x in ids}) > 3  # the model is not degenerate: a real check
    return ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_three_stages_over_ipc_match_one_node(tiny_llama, reference) -> None:
    cluster = cluster_of(tiny_llama, "abc")
    plan = plan_of(cluster, {"a": (0, 1), "b": (1, 3), "c": (3, 4)})
    with LocalCluster(cluster, plan) as local:
        outs = LLM.from_engine(local.engine).generate(batch(), PARAMS)
    assert [o.outputs[0].token_ids for o in outs] == reference


def test_two_stages_over_tcp_with_partial_inference_match_one_node(tiny_llama, reference) -> None:
    addresses = {n: f"tcp://127.0.0.1:{free_port()}" for n in ("a", "b", "coordinator")}
    cluster = cluster_of(tiny_llama, "ab", addresses)
    # b holds [1, 4) but requests from a (which ends at 3) run only layer 3 there.
    plan = plan_of(cluster, {"a": (0, 3), "b": (1, 4)}, partial=True)
    assert [(u, v) for u, v, _ in plan.flows] == [
        ("coordinator", "a"),
        ("a", "b"),
        ("b", "coordinator"),
    ]
    # Nodes with addresses are "started by hand": here, by the test.
    with LocalCluster(cluster, plan, start=["a", "b"]) as local:
        # A malformed frame is rejected and logged; the node keeps serving.
        import zmq

        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.connect(addresses["b"])
        push.send_multipart([b"\x93not a helix frame", b"x" * 10])
        push.close(linger=2000)
        ctx.term()
        outs = LLM.from_engine(local.engine).generate(batch(), PARAMS)
        log = (local.workdir / "b.log").read_text()
    assert [o.outputs[0].token_ids for o in outs] == reference
    assert "rejected a frame" in log


def test_killed_node_requests_move_to_the_surviving_route(tiny_llama, reference) -> None:
    cluster = cluster_of(tiny_llama, ["a", "b1", "b2"], big=("a",))
    plan = plan_of(cluster, {"a": (0, 2), "b1": (2, 4), "b2": (2, 4)})
    assert sorted(v for u, v, _ in plan.flows if u == "a") == ["b1", "b2"]
    with LocalCluster(cluster, plan, heartbeat_timeout_s=1.5) as local:
        engine = local.engine
        ids = [engine.add_request(p, PARAMS) for p in batch()]
        routes = {engine.requests[i].route is None for i in ids}
        assert routes == {True}
        victim = next(p for p in local.processes if "b1" in " ".join(map(str, p.args)))
        killed = False
        results = {}
        deadline = time.monotonic() + 120
        while engine.has_unfinished_requests():
            assert time.monotonic() < deadline, "requests hung after a node died"
            engine.step()
            if not killed and any(len(r.output.token_ids) >= 3 for r in engine.requests.values()):
                used = {r.route[-1] for r in engine.requests.values() if r.route}
                assert used == {"b1", "b2"}  # the flow splits over both routes
                victim.kill()
                killed = True
            for out in engine.pop_finished():
                results[out.request_id] = out
        assert killed
    assert [results[i].outputs[0].token_ids for i in ids] == reference
    assert all(results[i].outputs[0].finish_reason == "length" for i in ids)


def test_no_route_left_fails_with_a_clear_error(tiny_llama) -> None:
    cluster = cluster_of(tiny_llama, "ab")
    plan = plan_of(cluster, {"a": (0, 2), "b": (2, 4)})
    with LocalCluster(cluster, plan, heartbeat_timeout_s=1.0) as local:
        engine = local.engine
        request_id = engine.add_request(
            batch()[0], SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)
        )
        local.processes[1].kill()  # node b
        deadline = time.monotonic() + 60
        finished = []
        while not finished:
            assert time.monotonic() < deadline, "request hung after its only route died"
            engine.step()
            finished = engine.pop_finished()
    assert finished[0].request_id == request_id
    assert finished[0].outputs[0].finish_reason == "error"
    assert "no route" in (finished[0].error or "")
