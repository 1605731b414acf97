"""Liveness: a node beats from a thread of its own, so a pass longer than the heartbeat timeout
(a big prefill on a loaded machine) is not a dead node; a pass that hangs is (`stall_timeout_s`);
a node marked dead that comes back frees the KV of requests that moved away meanwhile."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from helix.runtime.cluster_engine import ClusterEngine
from helix.runtime.cluster_state import NodeInfo
from helix.runtime.engine_setup import NullTokenizer
from helix.runtime.messages import Forward, Heartbeat, Hello, Release, SeqWork, Shutdown
from helix.runtime.node import serve_node
from helix.runtime.transport import Endpoint
from helix.runtime.wire import to_wire

HIDDEN = 8


class _SlowStage:
    """A middle stage [1, 2) whose pass sleeps `seconds` and returns zeros."""

    start, end = 1, 2

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def allocate_kv_cache(self, num_blocks: int, block_size: int, device: Any = None) -> list[Any]:
        return []

    def __call__(self, x: Any, positions: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self.seconds)
        return torch.zeros(len(positions), HIDDEN)


def test_a_node_keeps_beating_during_a_long_pass_and_reports_how_long_it_runs(
    tmp_path: Path,
) -> None:
    coordinator = Endpoint(f"ipc://{tmp_path}/coordinator.sock")
    down = Endpoint(f"ipc://{tmp_path}/down.sock")
    up = Endpoint(f"ipc://{tmp_path}/up.sock")
    node_address = f"ipc://{tmp_path}/node.sock"
    args = ("node", node_address, coordinator.address, {"down": down.address}, _SlowStage(1.5))
    thread = threading.Thread(
        target=serve_node, args=(*args, 64, 16, torch.device("cpu")),
        kwargs={"heartbeat_s": 0.1}, daemon=True,
    )  # fmt: skip
    thread.start()
    try:
        hello = coordinator.recv(10.0)
        assert isinstance(hello, Hello)
        work = [SeqWork("r", 0, 4, [5, 6, 7, 8], ["up", "node", "down"], 1, True)]
        up.send(node_address, Forward(1, work, to_wire(torch.randn(4, HIDDEN))))
        beats: list[tuple[float, float]] = []  # (when, busy_s)
        sent_at = time.monotonic()
        forwarded = None
        while forwarded is None and time.monotonic() - sent_at < 20:
            msg = coordinator.recv(0.05)
            if isinstance(msg, Heartbeat):
                beats.append((time.monotonic() - sent_at, msg.busy_s))
            forwarded = down.recv(0.0)
        assert isinstance(forwarded, Forward)
        # Beats kept coming while the 1.5 s pass ran, never more than ~0.1 s apart at the
        # source; the busy time grew with the pass.
        during = [busy for _, busy in beats if busy > 0]
        assert len(during) >= 5, beats
        assert max(during) > 1.0
        assert during == sorted(during)
        gaps = [b - a for (a, _), (b, _) in zip(beats, beats[1:])]
        assert max(gaps) < 1.0, beats
        after = coordinator.recv(2.0)
        while after is not None and not isinstance(after, Heartbeat):
            after = coordinator.recv(2.0)
        assert isinstance(after, Heartbeat) and after.busy_s == 0.0  # between passes
        up.send(node_address, Shutdown("test over"))
        thread.join(10)
        assert not thread.is_alive()
    finally:
        for endpoint in (coordinator, down, up):
            endpoint.close()


def _engine(tmp_path: Path, **kwargs: Any) -> Any:
    nodes = [
        NodeInfo(name, f"ipc://{tmp_path}/{name}.sock", layers, 10_000, 16)
        for name, layers in (("a", (0, 2)), ("b", (2, 4)))
    ]
    flows = [("coordinator", "a", 10.0), ("a", "b", 10.0), ("b", "coordinator", 10.0)]
    config = SimpleNamespace(vocab_size=1000, eos_token_ids=())
    engine = ClusterEngine(
        nodes, flows, NullTokenizer(), config, f"ipc://{tmp_path}/c.sock", 4096, **kwargs
    )
    sent: list[tuple[str, Any]] = []
    engine.endpoint.send = lambda address, msg: sent.append((address, msg)) or True
    engine.sent = sent
    return engine


def test_a_stalled_pass_marks_the_node_dead_a_long_one_does_not(tmp_path: Path) -> None:
    engine = _engine(tmp_path, heartbeat_timeout_s=3.0, stall_timeout_s=10.0)
    try:
        for name in ("a", "b"):
            engine._on_alive(Hello(name, 0, 2, 10_000, 16, 1))
        changed: set[str] = set()
        engine._on_alive(Heartbeat("b", 1, 10_000, 1, 0.0, busy_s=8.0))  # long, not stalled
        engine._check_liveness(changed)
        assert engine.nodes["b"].alive
        engine._on_alive(Heartbeat("b", 1, 10_000, 1, 0.0, busy_s=11.0))
        engine._check_liveness(changed)
        assert not engine.nodes["b"].alive
        engine._on_alive(Heartbeat("b", 1, 10_000, 1, 0.0, busy_s=12.0))  # still hung
        assert not engine.nodes["b"].alive
        engine._on_alive(Heartbeat("b", 1, 10_000, 1, 0.0, busy_s=0.0))  # it finished
        assert engine.nodes["b"].alive
    finally:
        engine.endpoint.close()


def test_a_node_back_from_the_dead_frees_the_kv_of_requests_that_left_it(
    tmp_path: Path,
) -> None:
    from helix import SamplingParams

    engine = _engine(tmp_path, heartbeat_timeout_s=0.2)
    try:
        for name in ("a", "b"):
            engine._on_alive(Hello(name, 0, 2, 10_000, 16, 1))
        params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
        request_id = engine.add_request({"prompt_token_ids": [7] * 8}, params)
        engine.step()
        assert engine.requests[request_id].route == ["a", "b"]
        time.sleep(0.3)
        engine._on_alive(Heartbeat("a", 1, 10_000, 1, 0.0))
        changed: set[str] = set()
        engine._check_liveness(changed)  # b went silent: its request leaves its route
        assert not engine.nodes["b"].alive
        assert engine.requests[request_id].route is None
        engine.sent.clear()
        engine._on_alive(Heartbeat("b", 1, 10_000, 1, 0.0))  # same process, back
        assert engine.nodes["b"].alive
        releases = [msg for address, msg in engine.sent if isinstance(msg, Release)]
        assert releases and request_id in releases[0].request_ids
    finally:
        engine.endpoint.close()
