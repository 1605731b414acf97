"""How fast the simulator runs on a 500-node random cluster: wall time for 10 simulated minutes.

    python benchmarks/simulator_scale.py [--mode online --rate 4] [--duration 600] [--json]
        [--engine auto|native|python] [--compare-s 60]

The cost grows with node iterations, not with nodes: each iteration of each node is an event, plus
a wake-up when it starts on an idle node. A cluster kept full (offline) holds ~7,600 requests at
500 nodes, nearly each on a route of its own, so iterations are small (~2 packets): ~50k events
per simulated second. The compiled event loop (`planner/_simcore.c`) handles them at ~0.5 us
each; the pure-Python one at ~10 us. `--compare-s S` first runs both engines on the first S
simulated seconds, checks that they give the same result and prints the speed-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any

from helix.planner.problem import build_problem
from helix.planner.random_cluster import random_cluster
from helix.planner.simulate import SimConfig, simulate
from helix.planner.solvers import SolveOptions, solve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--cluster-seed", type=int, default=0)
    parser.add_argument("--solver", default="greedy", help="placement (milp is slow at 500)")
    parser.add_argument("--mode", default="online", choices=["online", "offline"])
    parser.add_argument("--rate", type=float, default=4.0, help="online requests per second")
    parser.add_argument("--routing", default="maxflow")
    parser.add_argument("--duration", type=float, default=600.0, help="simulated seconds")
    parser.add_argument("--warmup", type=float, default=0.0)
    parser.add_argument("--engine", default="auto", choices=["auto", "native", "python"])
    parser.add_argument(
        "--compare-s", type=float, default=0.0, help="first compare engines on this many s"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    cluster = random_cluster(args.cluster_seed, num_nodes=(args.nodes, args.nodes))
    started = time.perf_counter()
    plan = solve(build_problem(cluster), args.solver, SolveOptions(time_limit_s=30))
    plan_s = time.perf_counter() - started
    config = SimConfig(
        routing=args.routing,
        mode=args.mode,
        rate_per_s=args.rate if args.mode == "online" else None,
        duration_s=args.duration,
        warmup_s=args.warmup,
        engine=args.engine,
    )
    comparison = compare(cluster, plan, config, args.compare_s) if args.compare_s > 0 else {}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = simulate(cluster, plan, config)
    wall_s, cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0
    row = {
        "nodes": len(cluster.nodes),
        "nodes_used": len(plan.nodes),
        "model": cluster.model.name,
        "plan_flow_tokens_per_s": round(plan.throughput_tokens_per_s, 1),
        "plan_hops_mean": round(plan.stats.hops_mean, 2),
        "plan_seconds": round(plan_s, 1),
        "mode": args.mode,
        "rate_per_s": config.rate_per_s,
        "simulated_s": args.warmup + args.duration,
        "wall_s": round(wall_s, 1),
        "cpu_s": round(cpu_s, 1),
        "events": result.num_events,
        "events_per_cpu_s": round(result.num_events / max(cpu_s, 1e-9)),
        "total_tokens_per_s": round(result.total_tokens_per_s, 1),
        "decode_tokens_per_s": round(result.decode_tokens_per_s, 1),
        "admitted": result.num_admitted,
        "completed": result.num_completed,
        "engine": result.engine,
        **comparison,
    }
    if args.json:
        print(json.dumps(row, indent=2))
        return
    width = max(len(key) for key in row)
    for key, value in row.items():
        print(f"{key:{width}s}  {value}")
    verdict = "meets" if wall_s < 60 else "misses"
    simulated = row["simulated_s"]
    print(f"\n{simulated:.0f} simulated s in {wall_s:.1f} s wall: {verdict} the 60 s target")


def compare(cluster: Any, plan: Any, config: SimConfig, seconds: float) -> dict[str, Any]:
    """Both event loops on the first `seconds` simulated seconds: same result? how much faster?"""
    results, walls = {}, {}
    for engine in ("python", "native"):
        short = dataclasses.replace(config, duration_s=seconds, warmup_s=0.0, engine=engine)
        wall0 = time.perf_counter()
        results[engine] = simulate(cluster, plan, short).to_dict()
        walls[engine] = time.perf_counter() - wall0
    return {
        "compare_simulated_s": seconds,
        "compare_python_wall_s": round(walls["python"], 1),
        "compare_native_wall_s": round(walls["native"], 1),
        "compare_speedup": round(walls["python"] / walls["native"], 2),
        "compare_identical": results["python"] == results["native"],
    }


if __name__ == "__main__":
    main()
