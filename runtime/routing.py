"""Routes along the max flow: interleaved weighted round robin (IWRR) over each node's out-edges.

Each node keeps a virtual load per out-edge; a request of weight w takes the allowed edge with the
smallest `load + w / flow` and adds `w / flow` to it (the Helix paper's scheduler). The whole route
is chosen at admission, so a request's KV stays where it was written. No torch here.
"""

from __future__ import annotations

from collections.abc import Callable

COORDINATOR = "coordinator"


class FlowRouter:
    def __init__(self, flows: list[tuple[str, str, float]], min_share: float = 0.05) -> None:
        """`flows`: (from, to, tokens/s) edges of a plan; `coordinator` is source and sink. Edges
        carrying less than `min_share` of their node's outflow are ignored (Fail-Flow)."""
        out: dict[str, list[tuple[str, float]]] = {}
        for u, v, f in sorted(flows):
            if f > 0:
                out.setdefault(u, []).append((v, f))
        self.edges: dict[str, list[tuple[str, float]]] = {}
        for u, edges in out.items():
            total = sum(f for _, f in edges)
            self.edges[u] = [(v, f) for v, f in edges if f >= min_share * total]
        self.load: dict[tuple[str, str], float] = {}

    def route(
        self, weight: float, allowed: Callable[[str], bool] = lambda node: True
    ) -> list[str] | None:
        """Nodes from the first stage to the last, or None when no allowed route exists."""
        taken: list[tuple[str, str, float]] = []
        node, path = COORDINATOR, list[str]()
        while True:
            best: tuple[float, str, float] | None = None
            for v, f in self.edges.get(node, []):
                if v != COORDINATOR and (v in path or not allowed(v)):
                    continue
                if v == COORDINATOR and not path:
                    continue
                score = self.load.get((node, v), 0.0) + weight / f
                if best is None or score < best[0]:
                    best = (score, v, weight / f)
            if best is None:
                for u, v, step in taken:  # undo: a rejected request leaves no load behind
                    self.load[(u, v)] -= step
                return None
            _, nxt, step = best
            self.load[(node, nxt)] = self.load.get((node, nxt), 0.0) + step
            taken.append((node, nxt, step))
            if nxt == COORDINATOR:
                return path
            path.append(nxt)
            node = nxt
