"""Routing policies for the simulator: small strategy classes in a registry.

Every policy fixes a request's whole route at admission, walking hop by hop from the coordinator
(KV is reserved on every node of the route, so decode steps must follow it). The policies differ
only in how they choose among the feasible next hops:

| policy | next hop |
|---|---|
| `maxflow` | interleaved weighted round robin over the plan's edge flows (the Helix paper) |
| `random` | uniform among feasible next hops (seeded) |
| `swarm` | lowest accumulated priority; choosing a node adds its delay EMA (SWARM / the artifact) |
| `shortest-queue` | fewest requests queued at, running on or in flight to the node |
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

from .sim_graph import SINK, SOURCE, RouteGraph

Candidates = Callable[[int], list[int]]
"""candidates(at): the successors of `at` (sorted; SINK among them when it is one) on which the
request may reserve KV and a seat, coming from `at`."""


class RoutingPolicy(ABC):
    """Chooses routes. Contract: `route` returns the node indices of a whole route, or None when
    no feasible route exists, in which case the policy's state is exactly as before the call.
    `observe` gets each finished iteration's mean queueing-plus-compute delay per node."""

    name: ClassVar[str]
    uses_flows: ClassVar[bool] = False
    """Route over the plan's flow edges only (else over every usable link)."""
    wants_delays: ClassVar[bool] = False

    def __init__(self, graph: RouteGraph, rng: random.Random, queued: Callable[[int], int]):
        self.graph, self.rng, self.queued = graph, rng, queued

    def route(self, work: float, feasible: Candidates) -> list[int] | None:
        """`work` is the request's token count (prompt + output)."""
        at = SOURCE
        path: list[int] = []
        while True:
            candidates = feasible(at)
            if not candidates:
                self._undo([SOURCE, *path], work)
                return None
            nxt = candidates[0] if len(candidates) == 1 else self.choose(at, candidates, work)
            self._charge(at, nxt, work)
            if nxt == SINK:
                return path
            path.append(nxt)
            at = nxt

    @abstractmethod
    def choose(self, at: int, candidates: list[int], work: float) -> int:
        """One of `candidates` (two or more, sorted) as the next hop after `at`."""

    def _charge(self, at: int, nxt: int, work: float) -> None:  # noqa: B027 (optional hook)
        """Record the choice at -> nxt (undone by `_undo`)."""

    def _undo(self, hops: list[int], work: float) -> None:  # noqa: B027 (optional hook)
        """Undo the `_charge` of each consecutive pair in `hops`."""

    def observe(self, node: int, delay_s: float) -> None:  # noqa: B027 (optional hook)
        """A finished iteration on `node` took `delay_s` from arrival to completion (mean)."""


ROUTING: dict[str, type[RoutingPolicy]] = {}


def register_routing(cls: type[RoutingPolicy]) -> type[RoutingPolicy]:
    ROUTING[cls.name] = cls
    return cls


def routing_names() -> list[str]:
    return sorted(ROUTING)


@register_routing
class MaxFlowRouting(RoutingPolicy):
    """IWRR: pick the candidate minimising load + work/flow (lowest index on ties), then add
    work/flow to its load. The artifact charges the prompt at admission and 1 per decode step;
    charging prompt + output at admission gives the same totals without per-step bookkeeping."""

    name = "maxflow"
    uses_flows = True

    def __init__(self, graph: RouteGraph, rng: random.Random, queued: Callable[[int], int]):
        super().__init__(graph, rng, queued)
        self._load: dict[int, dict[int, float]] = {}
        """Per tail node, per head: the edge's load (nested so a hop reads one dict)."""
        self._flow: dict[int, dict[int, float]] = {}
        for (u, v), flow in graph.flow.items():
            self._load.setdefault(u, {})[v] = 0.0
            self._flow.setdefault(u, {})[v] = flow

    def choose(self, at: int, candidates: list[int], work: float) -> int:
        flow, load = self._flow[at], self._load[at]
        best, best_key = candidates[0], float("inf")
        for v in candidates:
            key = load[v] + work / flow[v]
            if key < best_key:
                best, best_key = v, key
        return best

    def _charge(self, at: int, nxt: int, work: float) -> None:
        self._load[at][nxt] += work / self._flow[at][nxt]

    def _undo(self, hops: list[int], work: float) -> None:
        for at, nxt in zip(hops, hops[1:]):
            self._load[at][nxt] -= work / self._flow[at][nxt]


@register_routing
class RandomRouting(RoutingPolicy):
    name = "random"

    def choose(self, at: int, candidates: list[int], work: float) -> int:
        return candidates[self.rng.randrange(len(candidates))]


@register_routing
class SwarmRouting(RoutingPolicy):
    """Per hop, the candidate with the lowest priority; choosing it adds its delay EMA."""

    name = "swarm"
    wants_delays = True
    initial_delay_s: ClassVar[float] = 0.05
    """The artifact's initial_priority."""
    smoothing: ClassVar[float] = 0.8
    """EMA weight of the old value."""

    def __init__(self, graph: RouteGraph, rng: random.Random, queued: Callable[[int], int]):
        super().__init__(graph, rng, queued)
        self._ema = [self.initial_delay_s] * len(graph.names)
        self._priority = [0.0] * len(graph.names)

    def choose(self, at: int, candidates: list[int], work: float) -> int:
        return min(candidates, key=lambda v: (self._priority[v], v))

    def _charge(self, at: int, nxt: int, work: float) -> None:
        if nxt != SINK:
            self._priority[nxt] += self._ema[nxt]

    def _undo(self, hops: list[int], work: float) -> None:
        for nxt in hops[1:]:
            self._priority[nxt] -= self._ema[nxt]

    def observe(self, node: int, delay_s: float) -> None:
        self._ema[node] = self.smoothing * self._ema[node] + (1 - self.smoothing) * delay_s


@register_routing
class ShortestQueueRouting(RoutingPolicy):
    name = "shortest-queue"

    def choose(self, at: int, candidates: list[int], work: float) -> int:
        return min(candidates, key=lambda v: (self.queued(v), v))
