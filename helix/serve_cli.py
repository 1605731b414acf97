"""`helix serve`: vLLM-named flags -> EngineConfig -> AsyncEngine -> OpenAI server on uvicorn.

Flags left out keep EngineConfig's defaults, so the dataclass stays the one source of them.
fastapi, uvicorn and torch are imported only when the command runs.
"""

from __future__ import annotations

import argparse
from typing import Any

_DEFAULT_MODEL = "smollm2-135m"
# flag dest -> EngineConfig field (both use vLLM's names)
_ENGINE_FLAGS = (
    "max_model_len", "block_size", "max_num_seqs", "max_num_batched_tokens",
    "enable_prefix_caching", "scheduling_policy", "dtype", "attention_backend",
    "kv_cache_memory_gb", "gpu_memory_utilization", "device", "seed", "enforce_eager",
)  # fmt: skip


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Add `serve` to the `helix` subcommands; returns its parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API",
        description="Run one engine node behind /v1/completions, /v1/chat/completions, "
        "/v1/models, /health, /metrics and /version.",
    )
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help=f"built-in name, HF folder or .gguf file (default {_DEFAULT_MODEL})",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to bind; 0 picks a free one")
    p.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on /v1")
    p.add_argument("--served-model-name", default=None, help="the `model` clients send")
    p.add_argument("--max-model-len", type=int, default=None, metavar="N", help="context limit")
    p.add_argument("--block-size", type=int, default=None, help="tokens per KV block (16)")
    p.add_argument("--max-num-seqs", type=int, default=None, metavar="N", help="running cap")
    p.add_argument(
        "--max-num-batched-tokens", type=int, default=None, metavar="N", help="step budget"
    )
    p.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="reuse KV blocks of shared prompt prefixes (on by default)",
    )
    p.add_argument("--scheduling-policy", choices=("fcfs", "priority"), default=None)
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    p.add_argument(
        "--attention-backend", choices=("auto", "torch", "triton", "pallas"), default=None
    )
    p.add_argument(
        "--enforce-eager",
        action="store_true",
        default=None,
        help="no CUDA graphs for decode steps (they are on by default on CUDA)",
    )
    p.add_argument("--kv-cache-memory-gb", type=float, default=None, metavar="GB")
    p.add_argument("--gpu-memory-utilization", type=float, default=None, metavar="F",
                   help="fill this fraction of the device's memory (host RAM on a CPU), weights "
                   "included; the KV cache gets the rest (overrides --kv-cache-memory-gb)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    p.add_argument("--seed", type=int, default=None, help="seed of the shared sampling stream")
    p.add_argument("--max-request-bytes", type=int, default=1 << 20, help="larger bodies get 413")
    p.add_argument("--uvicorn-log-level", default="info", help="uvicorn's log level")
    p.add_argument("--cluster", default=None,
                   help="cluster YAML: serve sharded over its nodes (nodes without an address "
                   "start as local processes). Without --cluster and without MODEL, the bundled "
                   "local-cpu cluster (3 local node processes) is served.")
    p.add_argument("--plan", default=None, help="plan YAML (default: plan the cluster first)")
    p.add_argument(
        "--pipeline-depth",
        type=int,
        default=None,
        metavar="N",
        help="cluster mode: micro-batches in flight per first node (default: one per stage; "
        "local CPU nodes: as many passes as the cores they share run at once)",
    )
    p.add_argument("--single-node", action="store_true",
                   help="serve the default model in this process instead of the local cluster")
    p.add_argument("--plan-time-limit", type=float, default=30.0,
                   help="seconds for planning when no --plan is given")
    p.set_defaults(func=cmd)
    return p


def engine_config(args: argparse.Namespace) -> Any:
    """The EngineConfig the flags describe (raises ValueError naming a bad field)."""
    from helix.runtime.engine_config import EngineConfig

    given = {k: getattr(args, k) for k in _ENGINE_FLAGS if getattr(args, k, None) is not None}
    return EngineConfig(model=args.model, **given)


def build_server(args: argparse.Namespace) -> tuple[Any, Any]:
    """(AsyncEngine, FastAPI app) for the flags; the caller owns the engine's shutdown."""
    from helix.runtime.async_engine import AsyncEngine
    from helix.runtime.server import build_app

    name = args.served_model_name or args.model or _DEFAULT_MODEL
    if is_cluster_mode(args):
        engine = AsyncEngine(start_cluster(args))
    else:
        engine = AsyncEngine.from_config(engine_config(args))
    return engine, build_app(engine, name, args.api_key, args.max_request_bytes)


def is_cluster_mode(args: argparse.Namespace) -> bool:
    if args.plan is not None and args.cluster is None:
        raise ValueError("--plan: needs --cluster too")
    return args.cluster is not None or (args.model is None and not args.single_node)


def start_cluster(args: argparse.Namespace) -> Any:
    """Plan if needed, start the nodes without an address locally, return the coordinator."""
    from pathlib import Path

    from helix.cli import bundled_cluster
    from helix.config import load_cluster
    from helix.planning import plan
    from helix.report import load_plan
    from helix.runtime.cluster_launch import LocalCluster

    path = Path(args.cluster) if args.cluster else bundled_cluster("local-cpu")
    if path is None or not path.exists():
        raise ValueError(f"--cluster: no such file {args.cluster!r}")
    cluster = load_cluster(path)
    the_plan = load_plan(args.plan) if args.plan else plan(cluster, "milp",
                                                          time_limit_s=args.plan_time_limit)
    local = LocalCluster(
        cluster, the_plan, args.model, node_args=cluster_node_args(args),
        engine_args=cluster_engine_args(args),
    )  # fmt: skip
    engine = local.engine
    engine.on_shutdown = local.close
    print(f"cluster: {len(the_plan.nodes)} nodes, plan {the_plan.throughput_tokens_per_s:,.1f} "
          f"tokens/s, logs in {local.workdir}", flush=True)
    return engine


def cluster_node_args(args: argparse.Namespace) -> list[str]:
    """`helix node` flags for the engine flags that act on every node."""
    node_args = ["--kv-cache-memory-gb", str(args.kv_cache_memory_gb or 0.5)]
    for flag in ("dtype", "block_size", "attention_backend", "device", "gpu_memory_utilization"):
        if getattr(args, flag) is not None:
            node_args += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return node_args


def cluster_engine_args(args: argparse.Namespace) -> dict[str, Any]:
    """The coordinator's share of the engine flags (the rest act on the nodes)."""
    given = {
        "max_model_len": args.max_model_len,
        "max_batch_tokens": args.max_num_batched_tokens,
        "max_num_seqs": args.max_num_seqs,
        "scheduling_policy": args.scheduling_policy,
        "enable_prefix_caching": args.enable_prefix_caching,
        "pipeline_depth": args.pipeline_depth,
    }
    return {k: v for k, v in given.items() if v is not None}


def cmd(args: argparse.Namespace) -> int:
    """Serve until interrupted; returns the exit status."""
    import uvicorn

    engine, app = build_server(args)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.uvicorn_log_level)
    finally:
        engine.shutdown()
    return 0
