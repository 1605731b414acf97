"""The event loop: nodes run iterations, links carry packets, the coordinator admits and samples.

Events are (time, sequence, handler, payload) in one heap; the sequence number breaks ties in
creation order, so a run is a pure function of its inputs and seed. The node-side handlers (the
hot path: iterations and transfers) live in `sim_iterations.py`, the coordinator's in
`sim_coordinator.py`.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable

from .plan import Plan
from .problem import Problem
from .sim_build import build_links, build_nodes
from .sim_compute import LayerTables
from .sim_coordinator import Coordinator
from .sim_graph import build_route_graph
from .sim_iterations import Event, NodeEvents
from .sim_metrics import Recorder, SimResult, build_result
from .sim_native import run_native, unsupported
from .sim_routing import ROUTING
from .simulate import SimConfig
from .spec import ClusterSpec


def _call(handler: Callable[[float], None], now: float) -> None:
    handler(now)


class Simulator(NodeEvents):
    def __init__(
        self, cluster: ClusterSpec, problem: Problem, plan: Plan, config: SimConfig,
        tables: dict[str, LayerTables],
    ):  # fmt: skip
        policy_cls = ROUTING[config.routing]
        self.graph = build_route_graph(plan, problem, policy_cls.uses_flows)
        self.config, self.plan = config, plan
        self.now = 0.0
        self.heap: list[Event] = []
        self.counter = itertools.count()
        self.num_events = 0
        self.engine = ""
        """`native` or `python`: which event loop ran (set by `run`)."""
        bin_s = config.bin_s or max(1.0, config.end_s / 100)
        self.rec = Recorder(config.warmup_s, config.end_s, bin_s)
        self.win_start, self.win_end = self.rec.start, self.rec.end
        self.nodes = build_nodes(cluster, self.graph, config, tables)
        self.links = build_links(cluster, self.graph, self.nodes)
        self.batch_cap, self.prompt_cap = config.batch_seqs, config.prompt_max_tokens
        self.act_bytes = cluster.model.activation_bytes_per_token
        self.token_bytes = cluster.token_bytes
        self.partial = self.graph.partial
        self.queued_of: Callable[[int], int] | None = None
        """Set while the compiled core runs: a node's `queued` lives there."""
        policy = policy_cls(self.graph, random.Random(f"routing-{config.seed}"), self._queued)
        self.observe = policy.observe if policy.wants_delays else None
        self.coord = Coordinator(self, policy)
        self.on_tokens = self.coord.receive
        self.on_wake = self._wake
        self.on_done = self._finish

    def _queued(self, v: int) -> int:
        return self.nodes[v].queued if self.queued_of is None else self.queued_of(v)

    # -- events ---------------------------------------------------------------------------------

    def push(self, at: float, handler: Callable[[float], None]) -> None:
        """Schedule `handler(at)` (the coordinator's arrivals)."""
        heapq.heappush(self.heap, (at, next(self.counter), _call, handler))

    def run(self) -> None:
        """Run to the end: on the compiled core when `config.engine` allows (see
        `sim_native`), else on the Python event loop below. Both give the same result."""
        for node in self.nodes:  # what an empty side of an iteration costs (0 for any LayerCost)
            node.empty_prompt_s = node.cost.prompt_s(0, 0)
            node.empty_decode_s = node.cost.decode_s(0, 0)
        engine = self.config.engine
        if engine != "python":
            why = unsupported(self)
            if why is None:
                self.engine = "native"
                run_native(self)
                return
            if engine == "native":
                raise ValueError(f"engine: native is unavailable: {why}")
        self.engine = "python"
        end, heap, pop = self.config.end_s, self.heap, heapq.heappop
        self.coord.start()
        self.last_s = end
        count, now = 0, self.now
        try:
            while heap:
                at, _, handler, payload = pop(heap)
                if at > end:
                    self._unstart(end)
                    return
                count += 1
                now = at
                handler(payload, at)
            self.last_s = now  # drained: nothing left to happen
        finally:
            self.now = now
            self.num_events += count

    def _unstart(self, end: float) -> None:
        """Iterations started ahead (see `sim_iterations`) on what lands after `end` never
        started: take their decode steps back out of the node's count."""
        for node in self.nodes:
            if node.busy and node.iter_start > end:
                node.decode_seqs -= sum(p.tokens for p in node.batch if not p.is_prompt)

    # -- results --------------------------------------------------------------------------------

    def result(self, wall_s: float) -> SimResult:
        return build_result(self, wall_s)

    def check_integrity(self) -> None:
        """Reservations equal what the admitted requests hold; none exceeds capacity."""
        used = [0] * len(self.nodes)
        seats = [0] * len(self.nodes)
        for request in self.coord.resident:
            assert request.route is not None
            for v, layers in zip(request.route.nodes, request.route.layers):
                used[v] += request.kv_tokens * layers
                seats[v] += 1
        for node in self.nodes:
            if node.kv_used != used[node.index] or node.seats != seats[node.index]:
                raise AssertionError(f"{node.name}: KV bookkeeping drifted")
            if node.kv_peak > node.kv_capacity or node.seats > self.config.seats_per_node:
                raise AssertionError(f"{node.name}: over capacity")
