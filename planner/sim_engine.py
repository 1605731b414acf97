"""The event loop: nodes run iterations, links carry packets, the coordinator admits and samples.

Events are (time, sequence, kind, payload) in one heap; the sequence number breaks ties in
creation order, so a run is a pure function of its inputs and seed. Transfers into a busy node do
not become events: they wait in the node's own `pending` heap and are collected when its
iteration ends (an idle node gets one WAKE event at the earliest arrival).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random

from .plan import Plan
from .problem import Problem
from .sim_compute import LayerTables, kv_capacity_entries, node_layer_cost, profile_tables
from .sim_coordinator import Coordinator
from .sim_graph import SINK, build_route_graph
from .sim_metrics import Recorder, SimResult, build_result
from .sim_routing import ROUTING
from .sim_state import COORD, DONE, WAKE, Link, Node, Packet
from .simulate import SimConfig
from .spec import ClusterSpec, SpecError


class Simulator:
    def __init__(
        self, cluster: ClusterSpec, problem: Problem, plan: Plan, config: SimConfig,
        tables: dict[str, LayerTables],
    ):  # fmt: skip
        policy_cls = ROUTING[config.routing]
        self.graph = build_route_graph(plan, problem, policy_cls.uses_flows)
        self.config, self.plan = config, plan
        self.now = 0.0
        self.heap: list[tuple[float, int, int, object]] = []
        self.counter = itertools.count()
        self.num_events = 0
        bin_s = config.bin_s or max(1.0, config.end_s / 100)
        self.rec = Recorder(config.warmup_s, config.end_s, bin_s)
        self.nodes = self._build_nodes(cluster, config, tables)
        self.links = self._build_links(cluster)
        self.batch_cap, self.prompt_cap = config.batch_seqs, config.prompt_max_tokens
        self.act_bytes = cluster.model.activation_bytes_per_token
        self.token_bytes = cluster.token_bytes
        policy = policy_cls(
            self.graph, random.Random(f"routing-{config.seed}"), lambda v: self.nodes[v].queued
        )
        self.observe = policy.observe if policy.wants_delays else None
        self.coord = Coordinator(self, policy)

    def _build_nodes(
        self, cluster: ClusterSpec, config: SimConfig, tables: dict[str, LayerTables]
    ) -> list[Node]:
        specs = {node.name: node for node in cluster.nodes}
        nodes = []
        for index, (name, layers) in enumerate(zip(self.graph.names, self.graph.ranges)):
            spec = specs[name]
            gpu = cluster.gpus[spec.gpu]
            profile = cluster.profiles.get(spec.gpu)
            table = tables.get(spec.gpu) or profile_tables(profile)
            k = layers[1] - layers[0]
            try:
                cost = node_layer_cost(
                    gpu, cluster.model, config.cost, k, profile, table, config.compute
                )
            except SpecError as exc:
                field = "compute" if exc.path == "compute" else f"plan.nodes.{name}.layers"
                raise SpecError(field, f"{name}: {exc.message}") from None
            capacity = kv_capacity_entries(gpu, cluster.model, config.cost, k)
            nic = math.inf if spec.nic_gbps is None else spec.nic_gbps * 1e9 / 8
            nodes.append(Node(index, name, spec.gpu, layers, cost, capacity, nic))
        return nodes

    def _build_links(self, cluster: ClusterSpec) -> dict[tuple[int, int], Link]:
        regions = {node.name: node.region for node in cluster.nodes}

        def endpoint(i: int) -> tuple[str, str]:
            if i < 0:  # SOURCE or SINK: the coordinator
                return cluster.coordinator, cluster.coordinator_region
            name = self.graph.names[i]
            return name, regions[name]

        links: dict[tuple[int, int], Link] = {}
        for u, successors in self.graph.succ.items():
            for v in successors:
                spec = cluster.network.link(*endpoint(u), *endpoint(v))
                assert spec is not None  # the graph only has edges whose link exists
                links[(u, v)] = Link(spec.gbps * 1e9 / 8, spec.latency_ms / 1e3)
        return links

    # -- events ---------------------------------------------------------------------------------

    def push(self, at: float, kind: int, payload: object) -> None:
        heapq.heappush(self.heap, (at, next(self.counter), kind, payload))

    def run(self) -> None:
        end, heap, pop = self.config.end_s, self.heap, heapq.heappop
        coord = self.coord
        coord.start()
        self.last_s = end
        while heap:
            at, _, kind, payload = pop(heap)
            if at > end:
                return
            self.now = at
            self.num_events += 1
            if kind == DONE:
                self._finish(payload, at)  # type: ignore[arg-type]
            elif kind == COORD:
                coord.receive(payload, at)  # type: ignore[arg-type]
            elif kind == WAKE:
                self._wake(payload, at)  # type: ignore[arg-type]
            else:
                coord.arrival(at)
        self.last_s = self.now  # drained: nothing left to happen

    def send(
        self, u: int, v: int, packets: list[Packet], nbytes: float, num_reqs: int, now: float
    ) -> None:
        """Serialise a transfer on link u -> v and both NICs; deliver at end + latency."""
        link = self.links[(u, v)]
        bps = link.bps
        start = link.free_s if link.free_s > now else now
        src = self.nodes[u] if u >= 0 else None
        dst = self.nodes[v] if v >= 0 else None
        if src is not None:
            if src.nic_bps < bps:
                bps = src.nic_bps
            if src.nic_out_free > start:
                start = src.nic_out_free
        if dst is not None:
            if dst.nic_bps < bps:
                bps = dst.nic_bps
            if dst.nic_in_free > start:
                start = dst.nic_in_free
        done = start + nbytes / bps
        link.free_s = done
        if src is not None:
            src.nic_out_free = done
        arrival = done + link.latency_s
        if dst is None:
            heapq.heappush(self.heap, (arrival, next(self.counter), COORD, packets))
            return
        dst.nic_in_free = done
        heapq.heappush(dst.pending, (arrival, next(self.counter), packets))
        dst.queued += num_reqs
        if not dst.busy and arrival < dst.wake_at:
            dst.wake_at = arrival
            heapq.heappush(self.heap, (arrival, next(self.counter), WAKE, dst))

    def _wake(self, node: Node, now: float) -> None:
        node.wake_at = math.inf
        if not node.busy:
            self._next_iteration(node, now)

    def _next_iteration(self, node: Node, now: float) -> None:
        pending = node.pending
        while pending and pending[0][0] <= now:
            arrival, _, packets = heapq.heappop(pending)
            for p in packets:
                p.arrived = arrival
                (node.prompt_q if p.is_prompt else node.decode_q).append(p)
        if node.decode_q or node.prompt_q:
            self._start(node, now)
        elif pending and pending[0][0] < node.wake_at:
            node.wake_at = pending[0][0]
            heapq.heappush(self.heap, (node.wake_at, next(self.counter), WAKE, node))

    def _start(self, node: Node, now: float) -> None:
        batch: list[Packet] = []
        decode_q, batch_cap = node.decode_q, self.batch_cap
        num_seqs = ctx = 0
        while decode_q and num_seqs < batch_cap:
            packet = decode_q[0]
            if num_seqs + packet.tokens > batch_cap:
                packet = _split(packet, batch_cap - num_seqs)
            else:
                decode_q.popleft()
            num_seqs += packet.tokens
            ctx += packet.ctx
            batch.append(packet)
        prompt_q, cap, num_prompt, sq = node.prompt_q, self.prompt_cap, 0, 0
        while prompt_q and (num_prompt == 0 or num_prompt + prompt_q[0].tokens <= cap):
            packet = prompt_q.popleft()
            num_prompt += packet.tokens
            sq += packet.sq
            batch.append(packet)
        node.decode_seqs += num_seqs
        node.busy, node.batch, node.iter_start = True, batch, now
        if self.graph.partial:
            seconds = self._iteration_s(node, batch)
        else:
            cost = node.cost
            seconds = node.num_layers * (
                cost.prompt_s(num_prompt, sq) + cost.decode_s(num_seqs, ctx)
            )
        heapq.heappush(self.heap, (now + seconds, next(self.counter), DONE, node))

    def _iteration_s(self, node: Node, batch: list[Packet]) -> float:
        """Partial inference: sum over layers of prompt_s + decode_s for the packets that run
        each layer (a packet runs the node's last `route.layers[hop]` layers)."""
        sums: dict[int, list[int]] = {}
        for p in batch:
            layers = p.route.layers[p.hop]
            acc = sums.get(layers)
            if acc is None:
                acc = sums[layers] = [0, 0, 0, 0]
            if p.is_prompt:
                acc[0] += p.tokens
                acc[1] += p.sq
            else:
                acc[2] += p.tokens
                acc[3] += p.ctx
        cost, total = node.cost, 0.0
        cum = [0, 0, 0, 0]
        ordered = sorted(sums, reverse=True)  # partial inference runs the node's last layers
        for i, layers in enumerate(ordered):
            cum = [a + b for a, b in zip(cum, sums[layers])]
            below = ordered[i + 1] if i + 1 < len(ordered) else 0
            total += (layers - below) * (
                cost.prompt_s(cum[0], cum[1]) + cost.decode_s(cum[2], cum[3])
            )
        return total

    def _finish(self, node: Node, now: float) -> None:
        node.busy = False
        node.iterations += 1
        start, rec = node.iter_start, self.rec
        if now > rec.start and start < rec.end:
            node.busy_s += (now if now < rec.end else rec.end) - (
                start if start > rec.start else rec.start
            )
        batch, node.batch = node.batch, []
        if len(batch) == 1:  # the common case: one packet, one destination
            p = batch[0]
            p.hop += 1
            nodes = p.route.nodes
            num_reqs = len(p.reqs)
            node.queued -= num_reqs
            if p.hop < len(nodes):
                self.send(node.index, nodes[p.hop], batch, self.act_bytes * p.tokens, num_reqs, now)
            else:
                self.send(node.index, SINK, batch, self.token_bytes * num_reqs, num_reqs, now)
        else:
            self._send_outputs(node, batch, now)
        if self.observe is not None:
            delay = sum(now - p.arrived for p in batch) / len(batch)
            self.observe(node.index, delay)
        self._next_iteration(node, now)

    def _send_outputs(self, node: Node, batch: list[Packet], now: float) -> None:
        """One transfer per next hop, carrying every packet bound there."""
        out: dict[int, list[Packet]] = {}
        sizes: dict[int, list[int]] = {}  # dest -> [tokens, requests]
        for p in batch:
            p.hop += 1
            nodes = p.route.nodes
            dest = nodes[p.hop] if p.hop < len(nodes) else SINK
            group = out.get(dest)
            num_reqs = len(p.reqs)
            if group is None:
                out[dest] = [p]
                sizes[dest] = [p.tokens, num_reqs]
            else:
                group.append(p)
                size = sizes[dest]
                size[0] += p.tokens
                size[1] += num_reqs
        sent = 0
        for dest, packets in out.items():
            tokens, num_reqs = sizes[dest]
            sent += num_reqs
            nbytes = self.token_bytes * num_reqs if dest == SINK else self.act_bytes * tokens
            self.send(node.index, dest, packets, nbytes, num_reqs, now)
        node.queued -= sent

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


def _split(packet: Packet, count: int) -> Packet:
    """Take the first `count` requests of a decode packet into a new one (it stays queued)."""
    head, packet.reqs = packet.reqs[:count], packet.reqs[count:]
    ctx = sum(r.prompt + r.done for r in head)
    taken = Packet(head, packet.route, False, count, ctx, 0, packet.step_start)
    taken.hop, taken.arrived = packet.hop, packet.arrived
    packet.tokens -= count
    packet.ctx -= ctx
    return taken
