"""The sharded runtime: node processes over ZeroMQ against the one-node engine."""

from __future__ import annotations

import time

from cluster_fixtures import PARAMS, batch, cluster_of, free_port, plan_of

from helix import LLM, SamplingParams
from helix.runtime.cluster_launch import LocalCluster


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
