"""`helix simulate`: run a plan on its cluster in the discrete-event simulator and report.

helix simulate clusters/helix-single24.yaml --plan plan.yaml --routing maxflow --mode offline
helix simulate helix-single24 --mode online --rate 1.5 --png sim.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from helix.planner.simulate import SimConfig, SimResult

_MAX_NODE_ROWS = 30


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from helix.planner.sim_compute import COMPUTE_SOURCES
    from helix.planner.sim_routing import routing_names

    p = sub.add_parser(
        "simulate",
        help="simulate serving a plan on its cluster (throughput, latency, utilisation)",
        description="Discrete-event simulation of CLUSTER serving its model with PLAN: "
        "continuous batching per node, links with latency and bandwidth, KV-aware admission.",
    )
    p.add_argument(
        "cluster",
        nargs="?",
        default=None,
        help="cluster YAML or bundled name (default helix-single24)",
    )
    p.add_argument(
        "--plan",
        metavar="PLAN.yaml",
        help="plan from `helix plan -o` (default: plan now with --solver)",
    )
    p.add_argument("--solver", default="milp", help="solver when planning here (default milp)")
    p.add_argument(
        "--time-limit",
        type=float,
        default=30.0,
        metavar="S",
        help="planning time limit (default 30)",
    )
    p.add_argument("--routing", default="maxflow", choices=routing_names())
    p.add_argument("--mode", default="offline", choices=["offline", "online"])
    p.add_argument(
        "--rate", type=float, default=None, metavar="R", help="online: Poisson arrivals per second"
    )
    p.add_argument(
        "--mmpp-rates",
        type=float,
        nargs="+",
        metavar="R",
        help="online: bursty arrivals, the rate of each MMPP state",
    )
    p.add_argument(
        "--mmpp-dwell",
        type=float,
        nargs="+",
        metavar="S",
        help="mean seconds in each MMPP state (default 10 each)",
    )
    p.add_argument("--lengths", default="lognormal", choices=["lognormal", "fixed"])
    p.add_argument("--prompt-tokens", type=int, default=750, help="mean prompt length")
    p.add_argument("--output-tokens", type=int, default=240, help="mean output length")
    p.add_argument(
        "--num-requests",
        type=int,
        default=None,
        metavar="N",
        help="create at most N requests, then drain",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=600.0,
        metavar="S",
        help="measured seconds after the warm-up (default 600)",
    )
    p.add_argument("--warmup", type=float, default=60.0, metavar="S", help="default 60")
    p.add_argument(
        "--compute",
        default="auto",
        choices=COMPUTE_SOURCES,
        help="per-layer times: measured tables > datasheet roofline > T(k)",
    )
    p.add_argument(
        "--profile", metavar="PROFILE.yaml", help="measured per-layer times from `helix profile`"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--engine",
        default="auto",
        choices=["auto", "native", "python"],
        help="event loop: the compiled one when built (auto), or force one; same results",
    )
    p.add_argument("--png", metavar="OUT.png", help="plot throughput over time and utilisation")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd)


def config_from_args(args: argparse.Namespace) -> SimConfig:
    from helix.planner.sim_workload import Arrivals, LengthSpec, MmppArrivals
    from helix.planner.simulate import SimConfig

    arrivals: Arrivals | None = None
    if args.mmpp_rates:
        dwell = args.mmpp_dwell or [10.0] * len(args.mmpp_rates)
        arrivals = MmppArrivals(tuple(args.mmpp_rates), tuple(dwell))
    lengths = LengthSpec(
        kind=args.lengths,
        prompt_mean_tokens=args.prompt_tokens,
        output_mean_tokens=args.output_tokens,
    )
    return SimConfig(
        routing=args.routing,
        mode=args.mode,
        rate_per_s=args.rate,
        arrivals=arrivals,
        duration_s=args.duration,
        warmup_s=args.warmup,
        seed=args.seed,
        lengths=lengths,
        num_requests=args.num_requests,
        compute=args.compute,
        engine=args.engine,
    )


def cmd(args: argparse.Namespace) -> int:
    import dataclasses

    from helix.cli import bundled_cluster
    from helix.config import load_cluster
    from helix.planner.simulate import simulate
    from helix.planner.spec import SpecError

    config = config_from_args(args)
    value = args.cluster or "helix-single24"
    path = Path(value) if Path(value).exists() else bundled_cluster(value)
    if path is None:
        raise SpecError("cluster", f"no such file {value!r} and no bundled cluster of that name")
    cluster = load_cluster(path)
    tables = {}
    if args.profile:
        from helix.profile_cli import load_profile

        measured = load_profile(args.profile)
        for kind in measured:
            if kind not in cluster.gpus:
                raise SpecError(f"profile.{kind}", f"the cluster has no GPU kind {kind!r}")
        profiles = {**cluster.profiles, **{k: p for k, (p, _, _) in measured.items()}}
        cluster = dataclasses.replace(cluster, profiles=profiles)
        tables = {kind: t for kind, (_, t, _) in measured.items()}
    if args.plan:
        from helix.report import load_plan

        plan = load_plan(args.plan)
    else:
        from helix.planning import plan as make_plan

        plan = make_plan(cluster, args.solver, time_limit_s=args.time_limit, seed=args.seed)
    result = simulate(cluster, plan, config, tables=tables)
    if args.png:
        plot_result(result, args.png)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    _print(result, plan.model, args.png)
    return 0


def _fmt_s(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def _print(result: SimResult, model: str, png: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    flow = result.plan_throughput_tokens_per_s
    summary = Table(
        title=f"{model}: {result.mode}, {result.routing} routing, "
        f"{result.window_s:,.0f} s measured (seed {result.seed})"
    )
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    share = f" ({result.total_tokens_per_s / flow:.0%} of plan)" if flow else ""
    rows: list[tuple[str, str]] = [
        ("plan max flow, tokens/s", f"{flow:,.1f}"),
        ("total tokens/s", f"{result.total_tokens_per_s:,.1f}{share}"),
        ("decode tokens/s", f"{result.decode_tokens_per_s:,.1f}"),
    ]
    for label, stats in (
        ("prompt latency", result.prompt_latency),
        ("decode latency", result.decode_latency),
    ):
        spread = " / ".join(_fmt_s(v) for v in (stats.mean_s, stats.p50_s, stats.p99_s))
        rows.append((f"{label} mean / p50 / p99, s", spread))
    rows.append(
        (
            "requests admitted / completed / waiting / dropped",
            f"{result.num_admitted} / {result.num_completed} / {result.num_waiting} / "
            f"{result.num_dropped}",
        )
    )
    rows.append(
        (
            "events / wall time",
            f"{result.num_events:,} / {result.wall_s:.1f} s ({result.engine or '?'} event loop)",
        )
    )
    for row in rows:
        summary.add_row(*row)
    console.print(summary)
    console.print(_node_table(result))
    if png:
        console.print(f"plot written to {png}")


def _node_table(result: SimResult) -> Any:
    from rich.table import Table

    nodes = sorted(result.nodes, key=lambda n: (-n.utilisation, n.name))
    shown = nodes[:_MAX_NODE_ROWS]
    more = f" (busiest {len(shown)} of {len(nodes)})" if len(nodes) > len(shown) else ""
    table = Table(title=f"nodes{more}")
    for column in (
        "node",
        "GPU",
        "layers",
        "busy",
        "KV mean",
        "KV peak",
        "iterations",
        "decode batch",
    ):
        table.add_column(column, justify="left" if column in ("node", "GPU") else "right")
    for node in shown:
        peak = node.kv_peak_entries / node.kv_capacity_entries if node.kv_capacity_entries else 0
        table.add_row(
            node.name,
            node.gpu,
            f"[{node.layers[0]}, {node.layers[1]})",
            f"{node.utilisation:.0%}",
            f"{node.kv_mean_use:.0%}",
            f"{peak:.0%}",
            f"{node.iterations:,}",
            f"{node.mean_decode_batch:.1f}",
        )
    return table


def plot_result(result: SimResult, path: str | Path) -> None:
    """Throughput over time (warm-up shaded) above per-node utilisation and mean KV use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes = sorted(result.nodes, key=lambda n: (n.layers, n.name))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7))
    times = [(i + 0.5) * result.bin_s for i in range(len(result.total_timeline))]
    top.plot(times, result.total_timeline, label="total tokens/s")
    top.plot(times, result.decode_timeline, label="decode tokens/s")
    top.axhline(
        result.plan_throughput_tokens_per_s, linestyle="--", color="grey", label="plan max flow"
    )
    if result.warmup_s:
        top.axvspan(0, result.warmup_s, color="grey", alpha=0.15, label="warm-up")
    top.set_xlabel("simulated time (s)")
    top.set_ylabel("tokens/s")
    top.legend(fontsize=8)
    top.set_title(f"{result.mode}, {result.routing} routing", fontsize=10)
    x = list(range(len(nodes)))
    width = 0.4
    bottom.bar([i - width / 2 for i in x], [n.utilisation for n in nodes], width, label="busy")
    bottom.bar([i + width / 2 for i in x], [n.kv_mean_use for n in nodes], width, label="KV mean")
    step = max(1, len(nodes) // 40)
    bottom.set_xticks(x[::step], [n.name for n in nodes][::step], rotation=90, fontsize=6)
    bottom.set_ylim(0, 1.05)
    bottom.set_ylabel("share")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
