"""Planner benchmark: milp against the paper's baselines on the paper's cluster and random clusters.

    python benchmarks/planner.py [--time-limit 60] [--seeds 1 2 3 4 5] [--json]

Prints one row per (cluster, solver): flow, bound, gap, hops, seconds, ratio to the best baseline.
The paper's Gurobi MILP reached 1289.56 tokens/s on helix-single24 after ~8 minutes on 20 threads.
`milp+partial` also allows partial-inference edges, which the petals baseline always uses.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from helix.config import load_cluster
from helix.planner.problem import build_problem
from helix.planner.random_cluster import random_cluster
from helix.planner.solvers import SolveOptions, solve

BASELINES = ["petals", "swarm", "separate", "homogeneous"]
PAPER_GUROBI = 1289.56


def run(name: str, cluster, time_limit: float) -> list[dict]:
    problem = build_problem(cluster)
    rows = []
    for solver in ["milp", "milp+partial", "greedy", *BASELINES]:
        started = time.perf_counter()
        base, partial = solver.removesuffix("+partial"), solver.endswith("+partial")
        try:
            plan = solve(problem, base, SolveOptions(time_limit_s=time_limit,
                                                     partial_inference=partial))
        except ValueError as exc:
            rows.append({"cluster": name, "solver": solver, "error": str(exc)})
            continue
        rows.append(
            {
                "cluster": name,
                "solver": solver,
                "flow": plan.throughput_tokens_per_s,
                "bound": plan.upper_bound_tokens_per_s,
                "gap": plan.gap,
                "hops": plan.stats.hops_max,
                "latency_ms": plan.stats.latency_ms_mean,
                "seconds": time.perf_counter() - started,
                "status": plan.solver.status,
            }
        )
    best_baseline = max(
        (r["flow"] for r in rows if r["solver"] in BASELINES and "flow" in r), default=0.0
    )
    for row in rows:
        if "flow" in row:
            row["ratio_to_best_baseline"] = row["flow"] / best_baseline if best_baseline else None
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3, 4, 5])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parents[1]
    clusters = [("helix-single24", load_cluster(repo / "clusters" / "helix-single24.yaml"))]
    for seed in args.seeds:
        cluster = random_cluster(seed)
        kinds = len({n.gpu for n in cluster.nodes})
        regions = len({n.region for n in cluster.nodes})
        clusters.append(
            (
                f"random-{seed} ({cluster.model.name}, {len(cluster.nodes)} nodes, "
                f"{kinds} kinds, {regions} regions)",
                cluster,
            )
        )
    rows = []
    for name, cluster in clusters:
        rows += run(name, cluster, args.time_limit)
        if not args.json:
            _print([r for r in rows if r["cluster"] == name])
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        paper = next(r for r in rows if r["cluster"] == "helix-single24" and r["solver"] == "milp")
        print(
            f"\nhelix-single24: milp {paper['flow']:.2f} tokens/s vs the paper's Gurobi "
            f"{PAPER_GUROBI} ({paper['flow'] / PAPER_GUROBI:.2f}x), gap {paper['gap']:.2%}, "
            f"{paper['seconds']:.1f} s"
        )


def _print(rows: list[dict]) -> None:
    print(f"\n{rows[0]['cluster']}")
    print(
        f"  {'solver':12s} {'flow':>11s} {'bound':>11s} {'gap':>7s} {'hops':>5s} "
        f"{'latency ms':>10s} {'seconds':>8s} {'vs best baseline':>16s}"
    )
    for r in rows:
        if "error" in r:
            print(f"  {r['solver']:12s} n/a ({r['error']})")
            continue
        print(
            f"  {r['solver']:12s} {r['flow']:11.1f} {r['bound']:11.1f} {r['gap']:7.2%} "
            f"{r['hops']:5d} {r['latency_ms']:10.1f} {r['seconds']:8.1f} "
            f"{r['ratio_to_best_baseline'] or 0:15.2f}x"
        )


if __name__ == "__main__":
    main()
