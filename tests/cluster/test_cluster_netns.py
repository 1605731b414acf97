"""Nodes in their own network namespaces, joined over veth pairs to a bridge, links shaped by tc.

The coordinator stays in the test's namespace, on the bridge. The link into b2 is a quarter of
the link into b1, in the cluster file and in `tc`, so the planned flow sends b1 more; the bytes that
really cross each veth must follow that split. Skipped without root, iproute2 or netns support.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cluster_fixtures import PARAMS, free_port, plan_of

from helix import LLM
from helix.config import cluster_from_dict
from helix.runtime.cluster_launch import LocalCluster

NODES = ("a", "b1", "b2")
MBIT = {"a": 40, "b1": 8, "b2": 2}  # shaped rate into each node's namespace


@dataclass
class Hosts:
    subnet: str
    namespaces: dict[str, str]
    veths: dict[str, str]
    """Node -> its interface inside its namespace."""

    def ip(self, index: int) -> str:
        return f"{self.subnet}.{index}"

    def rx_bytes(self, node: str) -> int:
        out = _ip("netns", "exec", self.namespaces[node], "ip", "-s", "-j", "link", "show",
                  self.veths[node])  # fmt: skip
        return int(json.loads(out)[0]["stats64"]["rx"]["bytes"])


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _tc(namespace: str | None, *args: str) -> None:
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    done = subprocess.run([*prefix, "tc", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)}: {done.stderr.strip()}")


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
        pytest.skip("needs root and iproute2 (ip, tc)")
    tag = f"{os.getpid() % 1000}{random.randrange(100)}"
    bridge = f"hxb{tag}"
    subnet = f"10.{random.randrange(64, 250)}.{random.randrange(1, 250)}"
    made: list[tuple[str, str]] = []
    try:
        _ip("link", "add", bridge, "type", "bridge")
        made.append(("link", bridge))
        _ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        namespaces, veths = {}, {}
        for i, node in enumerate(NODES):
            ns, outside, inside = f"hx{tag}-{node}", f"hxv{tag}{i}", f"hxp{tag}{i}"
            _ip("netns", "add", ns)
            made.append(("netns", ns))
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            made.append(("link", outside))
            _ip("link", "set", inside, "netns", ns)
            _ip("link", "set", outside, "master", bridge)
            _ip("link", "set", outside, "up")
            _ip("netns", "exec", ns, "ip", "addr", "add", f"{subnet}.{i + 2}/24", "dev", inside)
            _ip("netns", "exec", ns, "ip", "link", "set", inside, "up")
            _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
            # Egress of the bridge-side end = traffic into the node's namespace.
            _tc(None, "qdisc", "add", "dev", outside, "root", "tbf", "rate",
                f"{MBIT[node]}mbit", "burst", "32kbit", "latency", "400ms")  # fmt: skip
            namespaces[node], veths[node] = ns, inside
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        _teardown(made)
        pytest.skip(f"cannot build network namespaces here: {exc}")
    try:
        yield Hosts(subnet, namespaces, veths)
    finally:
        _teardown(made)


def _teardown(made: list[tuple[str, str]]) -> None:
    for kind, name in reversed(made):
        subprocess.run(["ip", kind, "del", name], capture_output=True, timeout=30)


def test_traffic_between_namespaces_follows_the_planned_flow(tiny_llama, hosts: Hosts) -> None:
    port = free_port()
    addresses = {node: f"tcp://{hosts.ip(i + 2)}:{port}" for i, node in enumerate(NODES)}
    gbps = {node: MBIT[node] / 1000 for node in NODES}
    data = {
        "model": str(tiny_llama),
        "gpus": {kind: {"memory_gb": 16, "bf16_tflops": 10, "hbm_gbps": 100} for kind in "XY"},
        "nodes": [
            {"name": n, "gpu": "Y" if n == "a" else "X", "address": addresses[n]} for n in NODES
        ],
        "coordinator": {"address": f"tcp://{hosts.ip(1)}:{free_port()}"},
        # A link of g gbps carries g*1e9/8 / (hidden*2 bytes) tokens/s: 8 Mbit/s -> 7812.5.
        "network": {
            "default": {"gbps": 1, "latency_ms": 1},
            "links": [
                {"between": ["coordinator", "a"], "gbps": gbps["a"], "latency_ms": 1},
                {"between": ["a", "b1"], "gbps": gbps["b1"], "latency_ms": 1},
                {"between": ["a", "b2"], "gbps": gbps["b2"], "latency_ms": 1},
            ],
        },
        "profiles": {  # a (kind Y) could feed 10000 tokens/s; b1 takes 5000, b2's link 1953
            "X": {"max_layers": 4, "tokens_per_s": [20000.0, 5000.0, 3000.0, 2000.0]},
            "Y": {"max_layers": 4, "tokens_per_s": [40000.0, 10000.0, 6000.0, 4000.0]},
        },
    }
    cluster = cluster_from_dict(data)
    plan = plan_of(cluster, {"a": (0, 2), "b1": (2, 4), "b2": (2, 4)})
    planned = {(u, v): f for u, v, f in plan.flows}
    share_b1 = planned[("a", "b1")] / (planned[("a", "b1")] + planned[("a", "b2")])
    assert 0.6 < share_b1 < 0.85  # b1's node capacity, b2's link: 5000 against 1953 tokens/s

    rng = random.Random(3)
    prompts = [{"prompt_token_ids": [rng.randrange(3, 211) for _ in range(24)]} for _ in range(20)]
    reference = [o.outputs[0].token_ids for o in LLM(str(tiny_llama)).generate(prompts, PARAMS)]
    prefix = {n: ["ip", "netns", "exec", hosts.namespaces[n]] for n in NODES}
    with LocalCluster(cluster, plan, start=list(NODES), launch_prefix=prefix) as local:
        before = {n: hosts.rx_bytes(n) for n in ("b1", "b2")}
        outs = LLM.from_engine(local.engine).generate(prompts, PARAMS)
        moved = {n: hosts.rx_bytes(n) - before[n] for n in ("b1", "b2")}
        routed = local.engine.routed_counts()
    assert [o.outputs[0].token_ids for o in outs] == reference
    # Requests: weighted round robin over the planned flow (within one request of it).
    to_b1, to_b2 = routed[("a", "b1")], routed[("a", "b2")]
    assert to_b1 + to_b2 == len(prompts)
    assert abs(to_b1 - share_b1 * len(prompts)) <= 1.5
    # Bytes on the wire (activations dominate; heartbeats flow the other way).
    measured_share = moved["b1"] / (moved["b1"] + moved["b2"])
    print(f"planned share to b1 {share_b1:.3f}; routed {to_b1}:{to_b2}; bytes {moved}")
    assert abs(measured_share - share_b1) < 0.12, (moved, share_b1)
