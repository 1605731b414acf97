"""Placement x routing, simulated: the paper's end-to-end evaluation table for one or two clusters.

    python benchmarks/layouts.py [--time-limit 30] [--duration 600] [--warmup 60] [--json]

For each cluster (the bundled helix-single24 and one random cluster), each solver's plan (milp,
petals, swarm, separate when the cluster allows it) runs under every routing policy, offline
(cluster kept full) and online (Poisson arrivals at `--online-load` x the request rate
that the best offline run on that cluster sustained, decode tokens/s / 240, so every layout faces
the same rate). Rows: decode
tokens/s, total tokens/s, prompt latency (time to first token) and decode latency per token.

Max flow is not the whole story: the max-flow plan may thread every request through many nodes,
and in decode a request sits at one node of its route at a time, so a deep route needs many
requests in flight (KV room on every node) to keep its nodes busy. The row `milp ≤N hops` is the
planner's throughput/hops frontier (`helix plan --pareto`) simulated offline with max-flow
routing, the best point kept: what a user gets by picking `--max-hops N` with `helix simulate`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from helix.config import load_cluster
from helix.planner.problem import build_problem
from helix.planner.random_cluster import random_cluster
from helix.planner.sim_routing import routing_names
from helix.planner.simulate import SimConfig, simulate
from helix.planner.solvers import SolveOptions, solve
from helix.planner.spec import ClusterSpec

SOLVERS = ["milp", "petals", "swarm", "separate"]
MEAN_OUTPUT_TOKENS = 240
# The paper's simulated decode tokens/s, offline / online (helix-paper-facts.md section 12).
PAPER = {"milp": (252.1, 141.6), "swarm": (124.7, 69.8), "separate": (124.3, 84.0)}


def run_cluster(name: str, cluster: ClusterSpec, args: argparse.Namespace) -> list[dict[str, Any]]:
    problem = build_problem(cluster)
    plans = {}
    rows: list[dict[str, Any]] = []
    for solver in SOLVERS:
        try:
            plans[solver] = solve(problem, solver, SolveOptions(time_limit_s=args.time_limit))
        except ValueError as exc:  # separate needs a GPU kind that holds the model alone
            rows.append({"cluster": name, "solver": solver, "skipped": str(exc)})
        if solver == "milp" and not args.no_frontier:
            label, plan = best_frontier_plan(cluster, args)
            plans[label] = plan
    for mode in ("offline", "online"):
        rate = None
        if mode == "online":
            best = max(r["decode_tokens_per_s"] for r in rows if r.get("mode") == "offline")
            rate = args.online_load * best / MEAN_OUTPUT_TOKENS
        for solver, plan in plans.items():
            for routing in routing_names():
                config = SimConfig(
                    routing=routing,
                    mode=mode,
                    rate_per_s=rate,
                    duration_s=args.duration,
                    warmup_s=args.warmup,
                    seed=args.seed,
                )
                started = time.perf_counter()
                result = simulate(cluster, plan, config)
                rows.append(
                    {
                        "cluster": name,
                        "solver": solver,
                        "flow": plan.throughput_tokens_per_s,
                        "hops": plan.stats.hops_max,
                        "routing": routing,
                        "mode": mode,
                        "rate_per_s": rate,
                        "decode_tokens_per_s": result.decode_tokens_per_s,
                        "total_tokens_per_s": result.total_tokens_per_s,
                        "prompt_latency_s": result.prompt_latency.mean_s,
                        "prompt_latency_p99_s": result.prompt_latency.p99_s,
                        "decode_latency_s": result.decode_latency.mean_s,
                        "decode_latency_p99_s": result.decode_latency.p99_s,
                        "completed": result.num_completed,
                        "seconds": time.perf_counter() - started,
                    }
                )
    return rows


def best_frontier_plan(cluster: ClusterSpec, args: argparse.Namespace) -> tuple[str, Any]:
    """The throughput/hops frontier's plan with the most simulated decode tokens/s (offline,
    max-flow routing), as `helix plan --pareto --simulate` picks it."""
    from helix.planning import pareto, simulated_decode

    frontier = pareto(cluster, time_limit_s=args.frontier_time)
    config = SimConfig(
        routing="maxflow",
        mode="offline",
        duration_s=args.duration,
        warmup_s=args.warmup,
        seed=args.seed,
    )
    decode = simulated_decode(cluster, frontier, config)
    for plan, value in zip(frontier, decode):
        print(
            f"  frontier: {plan.stats.hops_max} hops, flow {plan.throughput_tokens_per_s:,.0f}, "
            f"simulated decode {value:,.1f} tokens/s"
        )
    best = frontier[max(range(len(frontier)), key=lambda i: decode[i])]
    return f"milp ≤{best.stats.hops_max} hops", best


def _print(name: str, rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=name)
    columns = [
        "solver",
        "flow tok/s",
        "hops",
        "routing",
        "mode",
        "decode tok/s",
        "total tok/s",
        "prompt lat. s (p99)",
        "decode lat. s (p99)",
        "done",
        "sim s",
    ]
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("solver", "routing", "mode") else "right"
        )
    skipped = [r for r in rows if "skipped" in r]
    for r in rows:
        if "skipped" in r:
            continue
        table.add_row(
            r["solver"],
            f"{r['flow']:,.0f}",
            str(r["hops"]),
            r["routing"],
            r["mode"] if r["mode"] == "offline" else f"online {r['rate_per_s']:.2f}/s",
            f"{r['decode_tokens_per_s']:,.1f}",
            f"{r['total_tokens_per_s']:,.0f}",
            f"{r['prompt_latency_s']:.2f} ({r['prompt_latency_p99_s']:.1f})",
            f"{r['decode_latency_s']:.3f} ({r['decode_latency_p99_s']:.2f})",
            str(r["completed"]),
            f"{r['seconds']:.1f}",
        )
    console = Console(width=200)
    console.print(table)
    for r in skipped:
        console.print(f"  {r['solver']}: skipped ({r['skipped']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", type=Path, default=None, help="default: helix-single24")
    parser.add_argument("--random-seed", type=int, default=2, help="random cluster seed (-1: none)")
    parser.add_argument("--time-limit", type=float, default=30.0, help="milp seconds")
    parser.add_argument("--duration", type=float, default=600.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=60.0)
    parser.add_argument(
        "--online-load",
        type=float,
        default=0.5,
        help="online rate as a share of the best offline throughput",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-frontier", action="store_true", help="skip the hop-limited milp row")
    parser.add_argument(
        "--frontier-time", type=float, default=160.0, help="seconds for the whole frontier"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parents[1]
    path = args.cluster or repo / "clusters" / "helix-single24.yaml"
    clusters = [(path.stem, load_cluster(path))]
    if args.random_seed >= 0:
        cluster = random_cluster(args.random_seed, num_nodes=(24, 40))
        regions = len({n.region for n in cluster.nodes})
        label = (
            f"random-{args.random_seed} ({cluster.model.name}, {len(cluster.nodes)} nodes, "
            f"{len({n.gpu for n in cluster.nodes})} kinds, {regions} regions)"
        )
        clusters.append((label, cluster))
    rows: list[dict[str, Any]] = []
    for name, cluster in clusters:
        cluster_rows = run_cluster(name, cluster, args)
        rows += cluster_rows
        if not args.json:
            _print(name, cluster_rows)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        "paper (simulated decode tokens/s, offline / online, MaxFlow routing): "
        + ", ".join(f"{k} {v[0]} / {v[1]}" for k, v in PAPER.items())
    )


if __name__ == "__main__":
    main()
