"""Mutable state of a simulation: requests, packets (requests moving together), nodes and links.

Plain `__slots__` classes rather than dataclasses: the event loop touches them millions of times.
"""

from __future__ import annotations

import math
from collections import deque

from .sim_compute import LayerCost
from .sim_graph import SINK


class Route:
    """A fixed route: node indices and the layers each runs (partial inference runs a tail)."""

    __slots__ = ("nodes", "layers", "hops")

    def __init__(self, nodes: tuple[int, ...], layers: tuple[int, ...]):
        self.nodes, self.layers = nodes, layers
        self.hops = (*nodes, SINK)
        """Where a packet at hop h goes next: `hops[h + 1]` (SINK after the last node)."""


class Request:
    __slots__ = ("arrival_s", "prompt", "output", "done", "route")

    def __init__(self, arrival_s: float, prompt: int, output: int):
        self.arrival_s = arrival_s
        self.prompt = prompt
        self.output = output
        self.done = 0
        """Decode steps completed."""
        self.route: Route | None = None

    @property
    def kv_tokens(self) -> int:
        """Tokens reserved per layer run: the whole prompt plus every output token."""
        return self.prompt + self.output


def packets_load(packets: list[Packet]) -> tuple[int, int]:
    """(tokens, requests) that a transfer of these packets carries."""
    if len(packets) == 1:
        return packets[0].tokens, len(packets[0].reqs)
    tokens = num_reqs = 0
    for p in packets:
        tokens += p.tokens
        num_reqs += len(p.reqs)
    return tokens, num_reqs


class Packet:
    """Requests on the same route, at the same hop, in the same phase, travelling together."""

    __slots__ = (
        "reqs",
        "route",
        "hop",
        "is_prompt",
        "tokens",
        "ctx",
        "sq",
        "step_start",
        "arrived",
    )

    def __init__(
        self, reqs: list[Request], route: Route, is_prompt: bool, tokens: int, ctx: int, sq: int,
        step_start: float,
    ):  # fmt: skip
        self.reqs = reqs
        self.route = route
        self.hop = 0
        self.is_prompt = is_prompt
        self.tokens = tokens
        """Tokens each layer processes: prompt lengths summed, or one per decoding request."""
        self.ctx = ctx
        """Decode: cached tokens summed over the requests (attention reads them)."""
        self.sq = sq
        """Prompt: squared prompt lengths summed (attention FLOPs)."""
        self.step_start = step_start
        self.arrived = step_start


class Node:
    __slots__ = (
        "index", "name", "gpu", "layers", "cost", "kv_capacity", "kv_used", "kv_peak", "kv_area",
        "kv_last", "seats", "nic_bps", "nic_out_free", "nic_in_free", "prompt_q", "decode_q",
        "pending", "wake_at", "busy", "batch", "iter_start", "busy_s", "iterations",
        "decode_seqs", "queued", "num_layers", "out", "empty_prompt_s", "empty_decode_s",
        "lat_in_min",
    )  # fmt: skip

    def __init__(
        self, index: int, name: str, gpu: str, layers: tuple[int, int], cost: LayerCost,
        kv_capacity: int, nic_bps: float,
    ):  # fmt: skip
        self.index, self.name, self.gpu, self.layers = index, name, gpu, layers
        self.num_layers = layers[1] - layers[0]
        self.cost = cost
        self.empty_prompt_s = 0.0
        self.empty_decode_s = 0.0
        """What an empty side of an iteration costs (0; set when the run starts, from `cost`)."""
        self.kv_capacity = kv_capacity
        """Token-layer KV entries this node can hold."""
        self.kv_used = 0
        self.kv_peak = 0
        self.kv_area = 0.0
        """Integral of kv_used over the measured window (entries x seconds)."""
        self.kv_last = 0.0
        self.seats = 0
        """Requests holding a reservation here."""
        self.nic_bps = nic_bps
        self.nic_out_free = 0.0
        self.nic_in_free = 0.0
        self.prompt_q: deque[Packet] = deque()
        self.decode_q: deque[Packet] = deque()
        self.pending: list[tuple[float, int, list[Packet]]] = []
        """Heap of transfers on their way here: (arrival time, sequence, packets)."""
        self.wake_at = math.inf
        """When its earliest WAKE event is due (while idle)."""
        self.busy = False
        self.batch: list[Packet] = []
        """The running iteration's packets (stale while the node is idle)."""
        self.iter_start = 0.0
        self.busy_s = 0.0
        self.iterations = 0
        self.decode_seqs = 0
        self.queued = 0
        """Requests in flight to, waiting at, or running on this node."""
        self.out: dict[int, Link] = {}
        """Links to each successor (node index, or SINK)."""
        self.lat_in_min = math.inf
        """The lowest latency of the links into this node."""


class Link:
    """One direction of a link between two endpoints; `free_s` is when its last transfer
    finishes. `bps` is the slowest of the link and the two ends' NICs (fixed per pair)."""

    __slots__ = ("bps", "latency_s", "free_s", "src", "dst", "direct")

    def __init__(self, bps: float, latency_s: float, src: Node | None, dst: Node | None):
        self.bps, self.latency_s, self.free_s = bps, latency_s, 0.0
        self.src, self.dst = src, dst
        """The end nodes; None for the coordinator."""
        self.direct = False
        """No link into `dst` is faster: nothing sent later can land there before a transfer on
        this link does (transfers into a node are serialised on its NIC), so an idle `dst` may
        start on what it carries as soon as it is sent (set by `build_links`)."""
