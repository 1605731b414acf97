"""What each node of a serving engine reports to metrics: placement, KV use, recent token rate.

Torch-free: the one-node engine, the cluster coordinator and the node processes all use it.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

Edge = tuple[str, str]
COORDINATOR = "coordinator"


@dataclass(frozen=True)
class NodeLoad:
    """One node as the metrics see it; layers are [start, end)."""

    name: str
    gpu_kind: str
    layers: tuple[int, int]
    kv_usage: float
    """Fraction of the node's KV blocks in use (the coordinator: reserved for routed requests)."""
    tokens_per_s: float
    """Tokens the node ran through its layers per second, over a recent window."""
    alive: bool = True


class TokenRate:
    """Tokens per second over a sliding window of `window_s` seconds."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque()
        self._total = 0
        self.started = time.monotonic()

    def add(self, num_tokens: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._events.append((now, num_tokens))
        self._total += num_tokens
        self._trim(now)

    def per_second(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._trim(now)
        span = min(self.window_s, max(1e-6, now - self.started))
        return self._total / span

    def _trim(self, now: float) -> None:
        horizon = now - self.window_s
        while self._events and self._events[0][0] < horizon:
            self._total -= self._events.popleft()[1]


def route_edges(route: list[str]) -> list[Edge]:
    """The edges a request crosses: coordinator -> route[0] -> ... -> route[-1] -> coordinator."""
    hops = [COORDINATOR, *route, COORDINATOR]
    return list(zip(hops, hops[1:]))
