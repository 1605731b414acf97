"""The planner's public entry point: cluster file (or spec) in, Plan out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from helix.planner.plan import Plan
    from helix.planner.simulate import SimConfig
    from helix.planner.solvers import Progress
    from helix.planner.spec import ClusterSpec


def plan(
    cluster: ClusterSpec | str | Path,
    solver: str = "milp",
    *,
    time_limit_s: float = 60.0,
    partial_inference: bool = False,
    max_hops: int | None = None,
    seed: int = 0,
    progress: Any = None,
) -> Plan:
    """Place the cluster's model on its nodes. `cluster` is a ClusterSpec or a cluster YAML path."""
    from helix.config import load_cluster
    from helix.planner.problem import build_problem
    from helix.planner.solvers import SolveOptions, solve

    spec = cluster if not isinstance(cluster, (str, Path)) else load_cluster(cluster)
    options = SolveOptions(
        time_limit_s=time_limit_s,
        partial_inference=partial_inference,
        max_hops=max_hops,
        seed=seed,
        progress=progress,
    )
    return solve(build_problem(spec), solver, options)


def pareto(
    cluster: ClusterSpec | str | Path,
    *,
    time_limit_s: float = 60.0,
    partial_inference: bool = False,
    progress: Callable[[Progress], None] | None = None,
) -> list[Plan]:
    """Throughput/hops frontier: the best plan for each hop limit from the fewest possible hops up
    to the unlimited plan's depth; dominated points are dropped."""
    from helix.config import load_cluster
    from helix.planner.hops import min_hops
    from helix.planner.problem import build_problem
    from helix.planner.solvers import SolveOptions, solve

    spec = cluster if not isinstance(cluster, (str, Path)) else load_cluster(cluster)
    problem = build_problem(spec)
    share = time_limit_s / 4
    unlimited = solve(
        problem,
        "milp",
        SolveOptions(time_limit_s=share, partial_inference=partial_inference, progress=progress),
    )
    low, high = min_hops(problem), unlimited.stats.hops_max
    limits = sorted({low, *range(low, high, max(1, (high - low) // 6))} - {high})
    per_point = (time_limit_s - share) / max(1, len(limits))
    plans = [
        solve(
            problem,
            "milp",
            SolveOptions(
                time_limit_s=per_point,
                max_hops=h,
                partial_inference=partial_inference,
                progress=progress,
            ),
        )
        for h in limits
    ]
    plans.append(unlimited)
    frontier: list[Plan] = []
    for candidate in sorted(plans, key=lambda p: (p.stats.hops_max, -p.throughput_tokens_per_s)):
        if candidate.throughput_tokens_per_s <= 0:
            continue
        if not frontier or candidate.throughput_tokens_per_s > frontier[-1].throughput_tokens_per_s:
            frontier.append(candidate)
    return frontier


def simulated_decode(
    cluster: ClusterSpec, plans: list[Plan], config: SimConfig | None = None
) -> list[float]:
    """Each plan's simulated decode tokens/s (default: offline, the cluster kept full, max-flow
    routing, 600 s). Max flow overrates deep plans: in decode a request sits at one node of its
    route at a time, so a route needs (tokens/s x round trip) requests in flight, and its nodes'
    KV room caps them; the simulator models both, so it picks among a frontier's points."""
    from helix.planner.simulate import SimConfig, simulate

    config = config or SimConfig(routing="maxflow", mode="offline")
    return [simulate(cluster, plan, config).decode_tokens_per_s for plan in plans]
