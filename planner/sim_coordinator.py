"""The coordinator: creates requests, admits them onto routes (KV-aware), samples and finishes.

Admission order is FIFO: when the request at the head fits no route, later ones wait too. A
request that fits no route even on an idle cluster is dropped (counted in `num_dropped`).
Offline, at most `max_prefilling` admitted requests may still await their first token, so the
cluster fills by ramping up instead of queueing every prompt KV allows at t = 0.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from .sim_graph import SOURCE
from .sim_routing import RoutingPolicy
from .sim_state import Node, Packet, Request, Route, packets_load

if TYPE_CHECKING:
    from .sim_engine import Simulator

_MAX_DROPS_IN_A_ROW = 1000


class Coordinator:
    def __init__(self, sim: Simulator, policy: RoutingPolicy):
        config = sim.config
        self.sim, self.policy = sim, policy
        self.lengths = config.lengths.sampler(config.seed)
        process = config.arrival_process
        self.clock = None if process is None else process.start(config.seed)
        self.seats = config.seats_per_node
        self.limit = config.num_requests
        self.max_prefilling = config.max_prefilling or 2 * len(sim.nodes)
        self.prefilling = 0
        """Admitted requests whose first token has not come back yet."""
        self.waiting: deque[Request] = deque()
        self.resident: set[Request] = set()
        self.routes: dict[tuple[int, ...], Route] = {}
        graph = sim.graph
        self.succ: dict[int, tuple[tuple[int, int, Node | None], ...]] = {
            at: tuple(
                (v, graph.layers_run(at, v), sim.nodes[v]) if v >= 0 else (v, 0, None)
                for v in successors
            )
            for at, successors in graph.succ.items()
        }
        """Per node (and SOURCE): each successor, the layers it runs coming from there, and its
        Node (None for SINK), for the admission test."""
        self.links = {v: sim.links[(SOURCE, v)] for v in graph.succ.get(SOURCE, ())}
        """The coordinator's link to each first-stage node."""
        self.outbox: dict[int, list[Packet]] = {}
        """Packets for each route's first node, sent as one message by `flush`."""
        self.num_created = 0
        self.num_admitted = 0
        self.num_completed = 0
        self.num_dropped = 0
        self._drops_in_a_row = 0

    def start(self) -> None:
        if self.clock is None:
            self.admit(0.0)
            self.flush(0.0)
        else:
            self.sim.push(self.clock.next_after(0.0), self.arrival)

    def _new_request(self, now: float) -> Request | None:
        if self.limit is not None and self.num_created >= self.limit:
            return None
        self.num_created += 1
        prompt, output = self.lengths.draw()
        return Request(now, prompt, output)

    def arrival(self, now: float) -> None:
        request = self._new_request(now)
        if request is None:
            return
        self.waiting.append(request)
        self.admit(now)
        self.flush(now)
        assert self.clock is not None
        if self.limit is None or self.num_created < self.limit:
            self.sim.push(self.clock.next_after(now), self.arrival)

    # -- admission ------------------------------------------------------------------------------

    def admit(self, now: float) -> None:
        """Admit waiting requests (offline: new ones too) while each fits some route."""
        succ, seats = self.succ, self.seats
        offline = self.clock is None
        while not (offline and self.prefilling >= self.max_prefilling):
            if not self.waiting:
                fresh = self._new_request(now) if offline else None
                if fresh is None:
                    return
                self.waiting.append(fresh)
            request = self.waiting[0]
            need = request.kv_tokens

            def feasible(at: int, need: int = need) -> list[int]:
                return [
                    v
                    for v, layers, node in succ.get(at, ())
                    if node is None
                    or (node.seats < seats and node.kv_used + need * layers <= node.kv_capacity)
                ]

            path = self.policy.route(need, feasible)
            if path is None:
                if self.resident:
                    return
                self.waiting.popleft()
                self.num_dropped += 1
                self._drops_in_a_row += 1
                if self._drops_in_a_row >= _MAX_DROPS_IN_A_ROW:
                    raise ValueError(
                        f"lengths: {self._drops_in_a_row} requests in a row fit no route's KV "
                        f"cache (last: {request.prompt} + {request.output} tokens); use shorter "
                        "requests or a plan with more memory per node"
                    )
                continue
            self._drops_in_a_row = 0
            self.waiting.popleft()
            self._reserve(request, path, now)

    def _route(self, path: list[int]) -> Route:
        key = tuple(path)
        route = self.routes.get(key)
        if route is None:
            graph = self.sim.graph
            prevs = (SOURCE, *key[:-1])
            layers = tuple(graph.layers_run(p, v) for p, v in zip(prevs, key))
            route = self.routes[key] = Route(key, layers)
        return route

    def _reserve(self, request: Request, path: list[int], now: float) -> None:
        route = request.route = self._route(path)
        for v, layers in zip(route.nodes, route.layers):
            self._kv_change(self.sim.nodes[v], request.kv_tokens * layers, now)
            self.sim.nodes[v].seats += 1
        self.resident.add(request)
        self.num_admitted += 1
        self.prefilling += 1
        prompt = request.prompt
        packet = Packet([request], route, True, prompt, 0, prompt * prompt, now)
        self.outbox.setdefault(route.nodes[0], []).append(packet)

    def flush(self, now: float) -> None:
        """Send each first node one message: this instant's decode steps, then new prompts
        (like a scheduler step's output, so they can share the node's next iteration)."""
        outbox, self.outbox = self.outbox, {}
        token_bytes, links, transfer = self.sim.token_bytes, self.links, self.sim.transfer
        for node, packets in outbox.items():
            tokens, num_reqs = packets_load(packets)
            transfer(links[node], packets, token_bytes * tokens, num_reqs, now)

    def _release(self, request: Request, now: float) -> None:
        route = request.route
        assert route is not None
        for v, layers in zip(route.nodes, route.layers):
            self._kv_change(self.sim.nodes[v], -request.kv_tokens * layers, now)
            self.sim.nodes[v].seats -= 1
        self.resident.discard(request)
        self.num_completed += 1

    def _kv_change(self, node: Node, delta: int, now: float) -> None:
        node.kv_area += node.kv_used * self.sim.rec.overlap(node.kv_last, now)
        node.kv_last = now
        node.kv_used += delta
        if node.kv_used > node.kv_peak:
            node.kv_peak = node.kv_used

    # -- tokens back from the last node ---------------------------------------------------------

    def receive(self, packets: list[Packet], now: float) -> None:
        """Sample: record first tokens and decode steps, finish requests, send the next step."""
        rec = self.sim.rec
        next_step: dict[Route, list[Request]] = {}
        freed = False  # a request finished, or (offline) a prompt slot opened
        for packet in packets:
            reqs = packet.reqs
            if packet.is_prompt:
                self.prefilling -= len(reqs)
                freed = freed or self.clock is None
                for request in reqs:
                    rec.first_token(now, now - request.arrival_s, request.prompt)
                survivors = reqs
            else:
                rec.decode_step(now, now - packet.step_start, len(reqs))
                survivors = []
                for request in reqs:
                    done = request.done = request.done + 1
                    if done >= request.output:
                        self._release(request, now)
                        freed = True
                    else:
                        survivors.append(request)
                if not survivors:
                    continue
            group = next_step.get(packet.route)
            if group is None:
                next_step[packet.route] = survivors
            else:
                group.extend(survivors)
        outbox = self.outbox
        for route, reqs in next_step.items():
            if len(reqs) == 1:
                ctx = reqs[0].prompt + reqs[0].done
            else:
                ctx = sum(r.prompt + r.done for r in reqs)
            packet = Packet(reqs, route, False, len(reqs), ctx, 0, now)
            box = outbox.get(route.nodes[0])
            if box is None:
                outbox[route.nodes[0]] = [packet]
            else:
                box.append(packet)
        if freed:
            self.admit(now)
        self.flush(now)
