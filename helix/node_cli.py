"""`helix node`: run one pipeline node of a sharded cluster (addresses from the cluster file)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "node",
        help="run one node of a sharded cluster",
        description="Load this node's layer range from the plan, bind its address "
        "from the cluster file and serve micro-batches until shut down.",
    )
    p.add_argument("--cluster", required=True, help="cluster YAML (with node addresses)")
    p.add_argument("--plan", required=True, help="plan YAML from `helix plan -o`")
    p.add_argument("--name", required=True, help="this node's name in the cluster file")
    p.add_argument("--model", default=None, help="weights to load (default: the cluster's model)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--kv-cache-memory-gb", type=float, default=0.5, help="KV cache size (0.5)")
    p.add_argument(
        "--gpu-memory-utilization", type=float, default=None, metavar="F",
        help="size the KV cache to fill this fraction of the device's memory (host RAM on a "
        "CPU), weights included; overrides --kv-cache-memory-gb",
    )  # fmt: skip
    p.add_argument("--num-kv-blocks", type=int, default=None)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument(
        "--attention-backend", default="auto", choices=["auto", "torch", "triton", "pallas"]
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for this node")
    p.set_defaults(func=cmd)


def cmd(args: argparse.Namespace) -> int:
    import logging

    from helix.config import load_cluster
    from helix.report import load_plan
    from helix.runtime.cluster_launch import runtime_model
    from helix.runtime.engine_setup import _DTYPES, kv_block_bytes, resolve_device
    from helix.runtime.kv_budget import num_kv_blocks
    from helix.runtime.loader import load_stage
    from helix.runtime.node import serve_node

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.name} %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cluster = load_cluster(args.cluster)
    plan = load_plan(args.plan)
    if args.name not in plan.nodes:
        raise ValueError(
            f"--name: {args.name!r} holds no layers in the plan "
            f"(planned nodes: {', '.join(sorted(plan.nodes))})"
        )
    addresses = {node.name: node.address for node in cluster.nodes}
    if not addresses.get(args.name):
        raise ValueError(f"nodes: {args.name} has no address in {args.cluster}")
    if not cluster.coordinator_address:
        raise ValueError(f"coordinator.address: missing in {args.cluster}")
    node_plan = plan.nodes[args.name]
    device = resolve_device(args.device)
    dtype = _DTYPES[args.dtype]
    stage, config = load_stage(
        runtime_model(cluster, args.model),
        node_plan.start,
        node_plan.end,
        dtype=dtype,
        attention_backend=args.attention_backend,
        device=device,
    )
    num_blocks = args.num_kv_blocks or num_kv_blocks(
        kv_block_bytes(config, stage.num_local_layers, args.block_size, dtype),
        device,
        args.kv_cache_memory_gb,
        args.gpu_memory_utilization,
    )
    peers = {name: str(address) for name, address in addresses.items() if address}
    serve_node(
        args.name,
        str(addresses[args.name]),
        cluster.coordinator_address,
        peers,
        stage,
        num_blocks,
        args.block_size,
        device,
    )
    return 0
