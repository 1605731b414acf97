"""A node that comes back rejoins the flow; /metrics of a served cluster names its real nodes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cluster_fixtures import PARAMS, batch, cluster_of, plan_of

from helix.runtime.cluster_launch import LocalCluster


def run_all(engine: Any, prompts: list[Any], timeout_s: float = 120.0) -> dict[str, Any]:
    ids = [engine.add_request(p, PARAMS) for p in prompts]
    results: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s
    while len(results) < len(ids):
        assert time.monotonic() < deadline, "requests hung"
        engine.step()
        results.update((o.request_id, o) for o in engine.pop_finished())
    return {i: results[i] for i in ids}


def step_until(engine: Any, condition: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        engine.step()


def two_routes(tiny_llama: Any) -> tuple[Any, Any]:
    cluster = cluster_of(tiny_llama, ["a", "b1", "b2"], big=("a",))
    return cluster, plan_of(cluster, {"a": (0, 2), "b1": (2, 4), "b2": (2, 4)})


def test_dead_node_leaves_the_flow_and_rejoins_when_restarted(tiny_llama, reference) -> None:
    cluster, plan = two_routes(tiny_llama)
    with LocalCluster(cluster, plan, heartbeat_timeout_s=1.5) as local:
        engine = local.engine
        assert ("a", "b1") in engine.planned_flows()
        local.processes[local.local_names.index("b1")].kill()
        step_until(engine, lambda: not engine.nodes["b1"].alive, "b1 is marked dead")
        assert not any("b1" in edge for edge in engine.planned_flows())
        outs = run_all(engine, batch())  # served by a -> b2 alone meanwhile
        assert [o.outputs[0].token_ids for o in outs.values()] == reference
        routed_before = engine.routed_counts().get(("a", "b1"), 0)

        local.restart("b1")
        step_until(engine, lambda: engine.nodes["b1"].alive, "b1 rejoins", timeout_s=120)
        assert ("a", "b1") in engine.planned_flows()
        outs = run_all(engine, batch(seed=1))
        assert [o.outputs[0].token_ids for o in outs.values()] == reference
        assert engine.routed_counts().get(("a", "b1"), 0) > routed_before  # traffic came back


def test_node_restarted_within_the_heartbeat_timeout_replays_its_requests(
    tiny_llama, reference
) -> None:
    cluster, plan = two_routes(tiny_llama)
    # A timeout far longer than the restart: the coordinator learns of it only from the new
    # incarnation's hello, and must still move the requests whose KV died with the old process.
    with LocalCluster(cluster, plan, heartbeat_timeout_s=60.0) as local:
        engine = local.engine
        ids = [engine.add_request(p, PARAMS) for p in batch()]
        step_until(
            engine,
            lambda: any(len(r.output.token_ids) >= 2 for r in engine.requests.values()),
            "decoding started",
        )
        old = engine.nodes["b1"].incarnation
        local.restart("b1")
        results: dict[str, Any] = {}
        deadline = time.monotonic() + 120
        while len(results) < len(ids):
            assert time.monotonic() < deadline, "requests hung after a node restarted"
            engine.step()
            results.update((o.request_id, o) for o in engine.pop_finished())
        assert engine.nodes["b1"].incarnation != old
    assert [results[i].outputs[0].token_ids for i in ids] == reference
    assert all(results[i].outputs[0].finish_reason == "length" for i in ids)


def test_served_cluster_metrics_name_the_planned_nodes_and_edges(tiny_llama) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("prometheus_client")
    from fastapi.testclient import TestClient

    from helix.dashboard import parse_metrics
    from helix.runtime.async_engine import AsyncEngine
    from helix.runtime.server import build_app

    cluster, plan = two_routes(tiny_llama)
    with LocalCluster(cluster, plan) as local:
        engine = AsyncEngine(local.engine)
        try:
            client = TestClient(build_app(engine, "tiny"))
            prompts = [p["prompt_token_ids"] for p in batch()]
            for prompt in prompts:
                body = {"prompt": prompt, "max_tokens": 4, "ignore_eos": True}
                assert client.post("/v1/completions", json=body).status_code == 200
            time.sleep(1.2)  # a heartbeat with the nodes' token rates
            text = client.get("/metrics").text
        finally:
            engine.shutdown()
    snapshot = parse_metrics(text)
    nodes = {n.node: n for n in snapshot.nodes}
    assert set(nodes) == {"a", "b1", "b2"}
    assert (nodes["a"].gpu_kind, nodes["a"].layer_start, nodes["a"].layer_end) == ("Big", 0, 2)
    assert (nodes["b2"].gpu_kind, nodes["b2"].layer_start, nodes["b2"].layer_end) == ("X", 2, 4)
    assert all(n.up == 1 for n in nodes.values())
    assert nodes["a"].tokens_per_s and nodes["a"].tokens_per_s > 0
    assert set(snapshot.planned) == {
        ("coordinator", "a"),
        ("a", "b1"),
        ("a", "b2"),
        ("b1", "coordinator"),
        ("b2", "coordinator"),
    }
    n = len(prompts)
    routed = snapshot.routed
    assert routed[("coordinator", "a")] == n
    assert routed.get(("a", "b1"), 0) + routed.get(("a", "b2"), 0) == n
    assert routed.get(("a", "b1"), 0) > 0 and routed.get(("a", "b2"), 0) > 0
    back = routed.get(("b1", "coordinator"), 0) + routed.get(("b2", "coordinator"), 0)
    assert back == n


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux-only")
def test_local_nodes_die_with_the_process_that_started_them(tiny_llama, tmp_path) -> None:
    script = tmp_path / "start.py"
    script.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from cluster_fixtures import cluster_of, plan_of\n"
        "from helix.runtime.cluster_launch import LocalCluster\n"
        f"c = cluster_of({str(tiny_llama)!r}, 'ab')\n"
        "local = LocalCluster(c, plan_of(c, {'a': (0, 2), 'b': (2, 4)}))\n"
        "print('PIDS', *[p.pid for p in local.processes], flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    line = ""
    while not line.startswith("PIDS"):
        line = parent.stdout.readline()  # type: ignore[union-attr]
        assert line or parent.poll() is None, "the cluster did not start"
    pids = [int(p) for p in line.split()[1:]]
    parent.kill()  # no clean shutdown: SIGKILL
    parent.wait()
    deadline = time.monotonic() + 20
    while any(_running(pid) for pid in pids):
        assert time.monotonic() < deadline, "node processes outlived the killed coordinator"
        time.sleep(0.2)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
