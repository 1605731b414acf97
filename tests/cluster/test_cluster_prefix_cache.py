"""Prefix caching across a pipeline: each node caches its own KV, the route agrees on a prefix."""

from __future__ import annotations

import random
import time
from typing import Any

from cluster_fixtures import PARAMS, cluster_of, plan_of

from helix import LLM, SamplingParams
from helix.config import cluster_from_dict
from helix.runtime.cluster_launch import LocalCluster
from helix.runtime.routing import FlowRouter


def shared_prefix_prompts(num: int, prefix_len: int = 40, seed: int = 5) -> list[dict]:
    rng = random.Random(seed)
    prefix = [rng.randrange(3, 211) for _ in range(prefix_len)]
    return [
        {"prompt_token_ids": prefix + [rng.randrange(3, 211) for _ in range(3 + i)]}
        for i in range(num)
    ]


def run_one_by_one(engine: Any, prompts: list[Any], params: SamplingParams) -> list[Any]:
    """Each request alone, so the ones after the first find the prefix cached."""
    outs = []
    for prompt in prompts:
        request_id = engine.add_request(prompt, params)
        deadline = time.monotonic() + 60
        done: list[Any] = []
        while not done:
            assert time.monotonic() < deadline, "request hung"
            engine.step()
            done = engine.pop_finished()
        assert done[0].request_id == request_id
        outs.append(done[0])
    return outs


def reference_ids(model: Any, prompts: list[Any]) -> list[list[int]]:
    llm = LLM(str(model), enable_prefix_caching=False)
    return [o.outputs[0].token_ids for o in llm.generate(prompts, PARAMS)]


def test_shared_prefix_is_computed_once_per_route_and_output_unchanged(tiny_llama) -> None:
    prompts = shared_prefix_prompts(4)
    cluster = cluster_of(tiny_llama, "abc")
    plan = plan_of(cluster, {"a": (0, 1), "b": (1, 3), "c": (3, 4)})
    with LocalCluster(cluster, plan) as local:
        outs = run_one_by_one(local.engine, prompts, PARAMS)
        assert local.engine.num_prefix_misses == 0
    assert [o.outputs[0].token_ids for o in outs] == reference_ids(tiny_llama, prompts)
    assert outs[0].num_cached_tokens == 0
    assert [o.num_cached_tokens for o in outs[1:]] == [32, 32, 32]  # 2 full blocks of 16


def test_a_node_without_the_prefix_makes_the_route_replay_it(tiny_llama) -> None:
    # a feeds b1 and b2 alternately: the second request finds the prefix on a but not on b2.
    prompts = shared_prefix_prompts(4, seed=6)
    cluster = cluster_of(tiny_llama, ["a", "b1", "b2"], big=("a",))
    plan = plan_of(cluster, {"a": (0, 2), "b1": (2, 4), "b2": (2, 4)})
    with LocalCluster(cluster, plan) as local:
        engine = local.engine
        outs = run_one_by_one(engine, prompts, PARAMS)
        routes = {tuple(engine.routed_counts())}
        assert engine.num_prefix_misses >= 1
        assert engine.routed_counts()[("a", "b1")] and engine.routed_counts()[("a", "b2")], routes
    assert [o.outputs[0].token_ids for o in outs] == reference_ids(tiny_llama, prompts)
    assert outs[-1].num_cached_tokens == 32  # by then both routes hold it


def test_partial_inference_blocks_never_pass_for_full_ones(tiny_llama) -> None:
    # b holds [1, 4). From a1 (ends at 1) it runs layers 1-3; from a2 (ends at 3, partial
    # inference) only layer 3, so the KV it writes then lacks layers 1-2: those blocks must
    # never serve a request that comes through a1, though their tokens are the same.
    prompts = shared_prefix_prompts(4, seed=7)
    spec = {"memory_gb": 16, "bf16_tflops": 10, "hbm_gbps": 100}
    cluster = cluster_from_dict({
        "model": str(tiny_llama),
        "gpus": {"Slow": spec, "X": spec, "Fast": spec},
        "nodes": [{"name": "a1", "gpu": "Slow"}, {"name": "a2", "gpu": "X"},
                  {"name": "b", "gpu": "Fast"}],
        "network": {"default": {"gbps": 10, "latency_ms": 1}},
        "profiles": {"Slow": {"max_layers": 4, "tokens_per_s": [20.0, 10.0, 6.0, 5.0]},
                     "X": {"max_layers": 4, "tokens_per_s": [400.0, 200.0, 133.0, 100.0]},
                     "Fast": {"max_layers": 4, "tokens_per_s": [1200.0, 600.0, 400.0, 300.0]}},
    })  # fmt: skip
    plan = plan_of(cluster, {"a1": (0, 1), "a2": (0, 3), "b": (1, 4)}, partial=True)
    assert {(u, v) for u, v, _ in plan.flows} >= {("a1", "b"), ("a2", "b")}
    with LocalCluster(cluster, plan) as local:
        engine = local.engine
        # Alternate the routes, a2 first, so b's partial blocks are cached before its full ones.
        flows = [("coordinator", "a1", 1.0), ("coordinator", "a2", 1.01), ("a1", "b", 1.0),
                 ("a2", "b", 1.01), ("b", "coordinator", 2.01)]  # fmt: skip
        engine.router = FlowRouter(flows)
        outs = run_one_by_one(engine, prompts[:1], PARAMS)
        assert engine.routed_counts().get(("a2", "b")) == 1
        outs += run_one_by_one(engine, prompts[1:], PARAMS)
        counts = engine.routed_counts()
    assert counts[("a1", "b")] == 2 and counts[("a2", "b")] == 2
    assert [o.outputs[0].token_ids for o in outs] == reference_ids(tiny_llama, prompts)
    assert outs[-1].num_cached_tokens == 32  # each route found its own prefix at last


def test_cache_salt_keeps_tenants_apart(tiny_llama) -> None:
    prompts = shared_prefix_prompts(2, seed=8)
    cluster = cluster_of(tiny_llama, "ab")
    plan = plan_of(cluster, {"a": (0, 2), "b": (2, 4)})
    salted = [
        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, extra={"cache_salt": s})
        for s in ("tenant-1", "tenant-2")
    ]
    with LocalCluster(cluster, plan) as local:
        first = run_one_by_one(local.engine, prompts[:1], salted[0])
        other_tenant = run_one_by_one(local.engine, prompts[1:], salted[1])
        same_tenant = run_one_by_one(local.engine, prompts[1:], salted[0])
    assert first[0].num_cached_tokens == 0
    assert other_tenant[0].num_cached_tokens == 0
    assert same_tenant[0].num_cached_tokens == 32
    reference = reference_ids(tiny_llama, prompts)
    assert [first[0].outputs[0].token_ids, same_tenant[0].outputs[0].token_ids] == reference


def test_prefix_caching_off_computes_everything(tiny_llama) -> None:
    prompts = shared_prefix_prompts(2, seed=9)
    cluster = cluster_of(tiny_llama, "ab")
    plan = plan_of(cluster, {"a": (0, 2), "b": (2, 4)})
    with LocalCluster(cluster, plan, engine_args={"enable_prefix_caching": False}) as local:
        outs = run_one_by_one(local.engine, prompts, PARAMS)
    assert [o.num_cached_tokens for o in outs] == [0, 0]
    assert [o.outputs[0].token_ids for o in outs] == reference_ids(tiny_llama, prompts)
