"""Admission and micro-batching in the coordinator, without node processes (deterministic)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from helix import SamplingParams
from helix.runtime.cluster_engine import ClusterEngine, micro_batches
from helix.runtime.cluster_state import NodeInfo
from helix.runtime.engine_setup import NullTokenizer
from helix.runtime.messages import Forward

# `a` holds the first half of the layers and feeds b1 and b2, which hold the second half.
FLOWS = [
    ("coordinator", "a", 90.0),
    ("a", "b1", 60.0),
    ("a", "b2", 30.0),
    ("b1", "coordinator", 60.0),
    ("b2", "coordinator", 30.0),
]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Any]:
    nodes = [
        NodeInfo(name, f"ipc://{tmp_path}/{name}.sock", layers, 10_000, 16, alive=True)
        for name, layers in (("a", (0, 2)), ("b1", (2, 4)), ("b2", (2, 4)))
    ]
    config = SimpleNamespace(vocab_size=1000, eos_token_ids=())
    engine = ClusterEngine(
        nodes, FLOWS, NullTokenizer(), config, f"ipc://{tmp_path}/coordinator.sock", 4096
    )
    sent: list[tuple[str, Any]] = []

    def send(address: str, msg: Any) -> bool:
        sent.append((address, msg))
        return True

    engine.endpoint.send = send
    engine.sent = sent
    yield engine
    engine.endpoint.close()


def add(engine: Any, prompt_len: int, max_tokens: int) -> None:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    engine.add_request({"prompt_token_ids": [7] * prompt_len}, params)


def test_requests_share_the_flows_by_prompt_plus_generated_tokens(engine: Any) -> None:
    # Equal work (prompt + max_tokens = 48 tokens) but unequal prompts: weighted by the prompt
    # alone the long-prompt requests took b1 and the short ones crowded onto b2.
    for _ in range(6):
        add(engine, 40, 8)
        add(engine, 8, 40)
        add(engine, 8, 40)
    engine._admit(set())
    tokens = {"b1": 0, "b2": 0}
    for request in engine.requests.values():
        tokens[request.route[-1]] += len(request.prompt_token_ids) + request.max_tokens
    assert tokens == {"b1": 12 * 48, "b2": 6 * 48}  # the planned 2:1
    counts = engine.routed_counts()
    assert (counts[("a", "b1")], counts[("a", "b2")]) == (12, 6)


def test_a_micro_batch_follows_one_route(engine: Any) -> None:
    for _ in range(9):
        add(engine, 10, 10)
    engine._admit(set())
    engine._dispatch()
    forwards = [msg for _, msg in engine.sent if isinstance(msg, Forward)]
    assert len(forwards) == engine.num_stages == 2
    routes = [{tuple(work.route) for work in msg.work} for msg in forwards]
    assert sorted(routes) == [{("a", "b1")}, {("a", "b2")}]
    assert sorted(len(msg.work) for msg in forwards) == [3, 6]


def test_micro_batches_split_routes_apart_then_the_biggest_further() -> None:
    def requests(*routes: str) -> list[Any]:
        return [SimpleNamespace(route=list(r), name=f"{r}{i}") for i, r in enumerate(routes)]

    mixed = requests("ab", "ac", "ab", "ac", "ab", "ab")
    names = [[r.name for r in batch] for batch in micro_batches(mixed, 2)]
    assert names == [["ab0", "ab2", "ab4", "ab5"], ["ac1", "ac3"]]
    # No free slot: still one batch per route (a batch that comes back goes on whole).
    assert [len(b) for b in micro_batches(mixed, 0)] == [4, 2]
    # Spare slots split the biggest route's batch, dealt out in turn as for one route.
    names = [[r.name for r in batch] for batch in micro_batches(mixed, 3)]
    assert names == [["ab0", "ab4"], ["ab2", "ab5"], ["ac1", "ac3"]]
    one = requests(*["ab"] * 5)
    assert [[r.name for r in b] for b in micro_batches(one, 4)] == [
        ["ab0", "ab4"],
        ["ab1"],
        ["ab2"],
        ["ab3"],
    ]
    assert len(micro_batches(one[:2], 4)) == 2


def test_pipeline_depth_caps_the_micro_batches_in_flight(engine: Any) -> None:
    for _ in range(8):
        add(engine, 10, 10)
    engine.pipeline_depth = 1  # as if given pipeline_depth=1
    engine._admit(set())
    engine._dispatch()
    forwards = [msg for _, msg in engine.sent if isinstance(msg, Forward)]
    # one slot, two routes: still one batch per route, never a mixed one
    assert len(forwards) == 2
    engine._dispatch()  # nothing more goes out while both are in flight
    assert len([m for _, m in engine.sent if isinstance(m, Forward)]) == 2


def test_local_cpu_pipelines_keep_as_many_micro_batches_as_the_cores_run() -> None:
    from helix.runtime.cluster_launch import local_pipeline_depth

    assert local_pipeline_depth(4, cpu_cores=2, threads_per_node=1) == 2
    assert local_pipeline_depth(2, cpu_cores=2, threads_per_node=1) == 2
    assert local_pipeline_depth(4, cpu_cores=16, threads_per_node=2) == 4
    assert local_pipeline_depth(3, cpu_cores=2, threads_per_node=4) == 1


def test_local_nodes_of_one_chain_get_every_core_and_others_share_them() -> None:
    from helix.runtime.cluster_launch import local_pipeline_depth, local_threads

    chain = {"s0": (0, 10), "s1": (10, 20), "s2": (20, 30)}
    assert local_threads(chain, 3, cpu_cores=8, all_local=True) == 8
    assert local_pipeline_depth(3, cpu_cores=8, threads_per_node=8) == 1  # one pass at a time
    # some nodes run elsewhere: the local passes overlap with theirs, so the cores are split
    assert local_threads(chain, 2, cpu_cores=8, all_local=False) == 4
    # two routes (a feeds b1 and b2): passes run side by side
    fork = {"a": (0, 2), "b1": (2, 4), "b2": (2, 4)}
    assert local_threads(fork, 3, cpu_cores=8, all_local=True) == 2
    assert local_threads({"x": (0, 3), "y": (2, 4)}, 2, cpu_cores=2, all_local=True) == 1
    assert local_threads(fork, 3, cpu_cores=2, all_local=True) == 1


def test_nodes_sharing_cores_spin_briefly_unless_the_user_says_otherwise(monkeypatch) -> None:
    from helix.runtime.cluster_launch import short_openmp_spin

    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("KMP_BLOCKTIME", raising=False)
    assert short_openmp_spin() == {"GOMP_SPINCOUNT": "20000", "KMP_BLOCKTIME": "1"}
    monkeypatch.setenv("GOMP_SPINCOUNT", "5")
    assert short_openmp_spin() == {"KMP_BLOCKTIME": "1"}


def test_pipeline_depth_below_one_is_refused(tmp_path: Path) -> None:
    config = SimpleNamespace(vocab_size=1000, eos_token_ids=())
    with pytest.raises(ValueError, match="pipeline_depth"):
        ClusterEngine([], FLOWS, NullTokenizer(), config, f"ipc://{tmp_path}/c.sock", 64,
                      pipeline_depth=0)  # fmt: skip
