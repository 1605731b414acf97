"""Starting an idle node's iteration when the transfer that starts it is sent (instead of at a
WAKE event when it lands) is an exact shortcut: a run with it gives the same result as a run
without it, in fewer events."""

from __future__ import annotations

import math

import pytest

from helix.planner.problem import build_problem
from helix.planner.random_cluster import random_cluster
from helix.planner.sim_engine import Simulator
from helix.planner.sim_workload import LengthSpec
from helix.planner.simulate import SimConfig
from helix.planner.solvers import SolveOptions, solve

SHORT = LengthSpec(prompt_mean_tokens=300, output_mean_tokens=40)


def run(config: SimConfig, lookahead: bool) -> tuple[dict[str, object], int]:
    cluster = random_cluster(1, num_nodes=(40, 40))
    problem = build_problem(cluster, config.cost)
    plan = solve(problem, "greedy", SolveOptions(time_limit_s=10))
    sim = Simulator(cluster, problem, plan, config, {})
    if not lookahead:  # every transfer lands through the node's pending heap and a WAKE
        for node in sim.nodes:
            node.lat_in_min = -math.inf
        for link in sim.links.values():
            link.direct = False
    sim.run()
    sim.check_integrity()
    result = sim.result(wall_s=0.0).to_dict()
    return result, result.pop("num_events")


@pytest.mark.parametrize(
    "config",
    [
        SimConfig(mode="offline", duration_s=20, warmup_s=5, lengths=SHORT),
        SimConfig(
            mode="online", rate_per_s=3, duration_s=30, warmup_s=5, routing="swarm", lengths=SHORT
        ),
    ],
    ids=["offline", "online-swarm"],
)
def test_starting_iterations_at_send_time_changes_nothing_but_the_event_count(
    config: SimConfig,
) -> None:
    fast, fast_events = run(config, lookahead=True)
    slow, slow_events = run(config, lookahead=False)
    assert fast == slow
    assert fast["requests"]["completed"] > 0  # type: ignore[index]
    assert fast_events < slow_events
