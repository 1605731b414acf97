"""Cluster files, plans and prompts shared by the sharded-runtime tests (imported by name)."""

from __future__ import annotations

import random
import socket

from helix import SamplingParams
from helix.config import cluster_from_dict
from helix.planner.plan import SolverInfo, build_plan
from helix.planner.problem import build_problem

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
