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


def test_n_samples_and_logprobs_match_one_node(tiny_llama) -> None:
    cluster = cluster_of(tiny_llama, "ab")
    plan = plan_of(cluster, {"a": (0, 2), "b": (2, 4)})
    prompts = batch()[:3]
    sampled = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=8, ignore_eos=True)
    scored = SamplingParams(temperature=0, max_tokens=5, logprobs=3, ignore_eos=True)
    one_node = LLM(str(tiny_llama))
    expected = one_node.generate(prompts, sampled), one_node.generate(prompts, scored)
    with LocalCluster(cluster, plan) as local:
        llm = LLM.from_engine(local.engine)
        got = llm.generate(prompts, sampled), llm.generate(prompts, scored)
    for want, have in zip(expected[0], got[0]):
        assert [c.index for c in have.outputs] == [0, 1, 2]
        assert [c.token_ids for c in have.outputs] == [c.token_ids for c in want.outputs]
    assert len({tuple(c.token_ids) for c in got[0][0].outputs}) > 1  # really sampled, seed + i
    for want, have in zip(expected[1], got[1]):
        a, b = want.outputs[0], have.outputs[0]
        assert a.token_ids == b.token_ids
        assert b.logprobs is not None and len(b.logprobs) == 5
        for step_a, step_b in zip(a.logprobs, b.logprobs):
            assert step_a.keys() == step_b.keys() and len(step_b) >= 3
            assert all(abs(step_a[t] - step_b[t]) < 1e-4 for t in step_a)
        assert abs(a.cumulative_logprob - b.cumulative_logprob) < 1e-3


def test_scheduling_flags_chunks_caps_and_priority(tiny_llama, reference) -> None:
    cluster = cluster_of(tiny_llama, "ab")
    plan = plan_of(cluster, {"a": (0, 2), "b": (2, 4)})
    args = {"max_batch_tokens": 8, "max_num_seqs": 2, "scheduling_policy": "priority"}
    with LocalCluster(cluster, plan, engine_args=args) as local:
        engine = local.engine
        prompts = batch()
        priorities = [5, 4, 3, 2, 1, 0]  # the last request goes first
        ids = [
            engine.add_request(p, SamplingParams(**vars_of(PARAMS), extra={"priority": q}))
            for p, q in zip(prompts, priorities)
        ]
        first_routed: list[str] = []
        results = {}
        deadline = time.monotonic() + 120
        while engine.has_unfinished_requests():
            assert time.monotonic() < deadline, "requests hung"
            engine.step()
            routed = [r.request_id for r in engine.requests.values() if r.route is not None]
            assert len([r for r in engine.requests.values() if r.route and not r.finished]) <= 2
            first_routed += [r for r in routed if r not in first_routed]
            for out in engine.pop_finished():
                results[out.request_id] = out
    assert set(first_routed[:2]) == {ids[5], ids[4]}  # the two most urgent, admitted together
    # Prompts of 12..40 tokens went through in chunks of 8 tokens and still match.
    assert [results[i].outputs[0].token_ids for i in ids] == reference


def vars_of(params: SamplingParams) -> dict:
    return {"temperature": params.temperature, "max_tokens": params.max_tokens,
            "ignore_eos": params.ignore_eos}  # fmt: skip
