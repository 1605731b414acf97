"""Node iterations and transfers: the event handlers that make up almost all of a large run.

A transfer is serialised on its link direction and on both ends' NICs, then lands in the
destination's `pending` heap. A busy node collects what has landed when its iteration ends
(DONE); an idle node gets one WAKE event at the earliest landing, unless it can start at once:

**Starting ahead (exact).** Transfers into a node are serialised on its NIC, so one sent later
finishes after every one sent so far and lands no earlier than `nic_in_free + lat_in_min`. An
idle node whose next landing comes no later than that knows its next batch already: it starts
the iteration (dated at the landing) when the transfer is sent, or when its previous iteration
ends, and skips the WAKE. Results are the same; only `num_events` drops (tested against runs
with it switched off). An iteration dated after the run's end is taken back out of the count.

Written for CPython speed (a 500-node run executes tens of millions of these): `__slots__`
attributes read into locals, a link's effective bandwidth precomputed, the common one-packet
iteration's output sent inline, and a batch that is just what landed (nothing left queued, and it
fits one iteration) built without going through the node's queues. Behaviour is exactly that of
the straightforward version: same events, in the same order, with the same floats.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator
from typing import Any

from .sim_state import Link, Node, Packet, packets_load

_heappush, _heappop = heapq.heappush, heapq.heappop
_INF = math.inf

Event = tuple[float, int, Callable[[Any, float], None], Any]
"""(time, sequence, handler, payload): `handler(payload, time)` runs when it is due; the
sequence number (creation order) breaks ties, so a run is a pure function of its inputs."""


class NodeEvents:
    """The node-side event handlers; `Simulator` sets these attributes up."""

    heap: list[Event]
    counter: Iterator[int]
    batch_cap: int
    prompt_cap: int
    act_bytes: int
    token_bytes: int
    partial: bool
    win_start: float
    win_end: float
    observe: Callable[[int, float], None] | None
    on_tokens: Callable[[list[Packet], float], None]
    on_wake: Callable[[Node, float], None]
    on_done: Callable[[Node, float], None]

    def transfer(
        self, link: Link, packets: list[Packet], nbytes: float, num_reqs: int, now: float
    ) -> None:
        """Serialise a transfer on `link` and both NICs; deliver at end + latency."""
        start = link.free_s
        if now > start:
            start = now
        src, dst = link.src, link.dst
        if src is not None and src.nic_out_free > start:
            start = src.nic_out_free
        if dst is None:  # tokens back to the coordinator
            done = start + nbytes / link.bps
            link.free_s = done
            if src is not None:
                src.nic_out_free = done
            arrival = done + link.latency_s
            _heappush(self.heap, (arrival, next(self.counter), self.on_tokens, packets))
            return
        if dst.nic_in_free > start:
            start = dst.nic_in_free
        done = start + nbytes / link.bps
        link.free_s = done
        if src is not None:
            src.nic_out_free = done
        dst.nic_in_free = done
        arrival = done + link.latency_s
        dst.queued += num_reqs
        if dst.busy or arrival >= dst.wake_at:
            _heappush(dst.pending, (arrival, next(self.counter), packets))
        elif link.direct and dst.wake_at == _INF:  # idle, and this lands there first
            self._begin(dst, arrival, packets, arrival)
        else:
            _heappush(dst.pending, (arrival, next(self.counter), packets))
            dst.wake_at = arrival
            _heappush(self.heap, (arrival, next(self.counter), self.on_wake, dst))

    def _wake(self, node: Node, now: float) -> None:
        node.wake_at = _INF
        if not node.busy:
            self._next_iteration(node, now)

    def _begin(self, node: Node, now: float, packets: list[Packet], arrival: float) -> None:
        """An idle node with nothing queued starts on one transfer's `packets` (landed at
        `arrival` <= `now`), when nothing else has landed by `now`."""
        num_seqs = ctx = 0
        for p in packets:
            p.arrived = arrival
            if p.is_prompt:
                break
            num_seqs += p.tokens
            ctx += p.ctx
        else:
            if num_seqs <= self.batch_cap:
                self._run(node, now, packets, num_seqs, ctx, 0, 0)
                return
        _heappush(node.pending, (arrival, next(self.counter), packets))
        self._collect(node, now)

    def _next_iteration(self, node: Node, now: float) -> None:
        """The node is idle at `now`: start on what has landed, or wake up when something does."""
        pending = node.pending
        if pending and pending[0][0] <= now and not node.decode_q and not node.prompt_q:
            arrival, _, packets = _heappop(pending)
            if not pending or pending[0][0] > now:  # one transfer landed: the common case
                self._begin(node, now, packets, arrival)
                return
            _heappush(pending, (arrival, _, packets))
        self._collect(node, now)

    def _collect(self, node: Node, now: float) -> None:
        """`_next_iteration` in general: take what has landed by `now` into the batch or the
        queues, start an iteration, or wake up when the next transfer lands."""
        pending = node.pending
        if pending and pending[0][0] <= now:
            decode_q, prompt_q = node.decode_q, node.prompt_q
            if not decode_q and not prompt_q:  # the batch is what landed, if it fits one
                batch: list[Packet] = []
                prompts: list[Packet] = []
                num_seqs = ctx = num_prompt = sq = 0
                while pending and pending[0][0] <= now:
                    arrival, _, packets = _heappop(pending)
                    for p in packets:
                        p.arrived = arrival
                        if p.is_prompt:
                            prompts.append(p)
                            num_prompt += p.tokens
                            sq += p.sq
                        else:
                            batch.append(p)
                            num_seqs += p.tokens
                            ctx += p.ctx
                if num_seqs <= self.batch_cap and (
                    len(prompts) < 2 or num_prompt <= self.prompt_cap
                ):
                    if prompts:
                        batch.extend(prompts)
                    self._run(node, now, batch, num_seqs, ctx, num_prompt, sq)
                    return
                decode_q.extend(batch)
                prompt_q.extend(prompts)
            else:
                while pending and pending[0][0] <= now:
                    arrival, _, packets = _heappop(pending)
                    for p in packets:
                        p.arrived = arrival
                        if p.is_prompt:
                            prompt_q.append(p)
                        else:
                            decode_q.append(p)
        if node.decode_q or node.prompt_q:
            self._start(node, now)
        elif pending and pending[0][0] < node.wake_at:
            at = pending[0][0]
            if at <= node.nic_in_free + node.lat_in_min:  # nothing sent later lands first
                self._next_iteration(node, at)
            else:
                node.wake_at = at
                _heappush(self.heap, (at, next(self.counter), self.on_wake, node))

    def _start(self, node: Node, now: float) -> None:
        """Start an iteration from the node's queues: every decode step (up to the batch cap,
        splitting a packet if needed), then whole prompts up to the prompt cap."""
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
        prompt_q, num_prompt, sq = node.prompt_q, 0, 0
        if prompt_q:
            cap = self.prompt_cap
            while prompt_q and (num_prompt == 0 or num_prompt + prompt_q[0].tokens <= cap):
                packet = prompt_q.popleft()
                num_prompt += packet.tokens
                sq += packet.sq
                batch.append(packet)
        self._run(node, now, batch, num_seqs, ctx, num_prompt, sq)

    def _run(
        self, node: Node, now: float, batch: list[Packet], num_seqs: int, ctx: int,
        num_prompt: int, sq: int,
    ) -> None:  # fmt: skip
        """Run `batch` on `node` from `now`: its DONE event goes in."""
        node.decode_seqs += num_seqs
        node.busy, node.batch, node.iter_start = True, batch, now
        if self.partial:
            seconds = _partial_s(node, batch)
        elif num_prompt == 0:  # an empty side costs what the node measured for it (0)
            seconds = node.num_layers * (node.empty_prompt_s + node.cost.decode_s(num_seqs, ctx))
        elif num_seqs == 0:
            seconds = node.num_layers * (node.cost.prompt_s(num_prompt, sq) + node.empty_decode_s)
        else:
            cost = node.cost
            seconds = node.num_layers * (
                cost.prompt_s(num_prompt, sq) + cost.decode_s(num_seqs, ctx)
            )
        _heappush(self.heap, (now + seconds, next(self.counter), self.on_done, node))

    def _finish(self, node: Node, now: float) -> None:
        """An iteration ends: send its packets on, then start on whatever has landed."""
        node.busy = False
        node.iterations += 1
        start = node.iter_start
        if now > self.win_start and start < self.win_end:
            end = self.win_end
            node.busy_s += (now if now < end else end) - (
                start if start > self.win_start else self.win_start
            )
        batch = node.batch
        if self.observe is not None:  # before sending: a next hop may start on them at once
            total = 0.0  # a plain left-to-right sum, as the C core does (not sum()'s, 3.12+)
            for p in batch:
                total += now - p.arrived
            self.observe(node.index, total / len(batch))
        if len(batch) != 1:
            self._send_outputs(node, batch, now)
        else:  # _transfer, written out for the common case of one packet
            p = batch[0]
            hop = p.hop = p.hop + 1
            num_reqs = len(p.reqs)
            node.queued -= num_reqs
            link = node.out[p.route.hops[hop]]
            start = link.free_s
            if now > start:
                start = now
            if node.nic_out_free > start:
                start = node.nic_out_free
            dst = link.dst
            if dst is None:
                done = start + self.token_bytes * num_reqs / link.bps
                link.free_s = node.nic_out_free = done
                arrival = done + link.latency_s
                _heappush(self.heap, (arrival, next(self.counter), self.on_tokens, batch))
            else:
                if dst.nic_in_free > start:
                    start = dst.nic_in_free
                done = start + self.act_bytes * p.tokens / link.bps
                link.free_s = node.nic_out_free = dst.nic_in_free = done
                arrival = done + link.latency_s
                dst.queued += num_reqs
                if dst.busy or arrival >= dst.wake_at:
                    _heappush(dst.pending, (arrival, next(self.counter), batch))
                elif link.direct and dst.wake_at == _INF:
                    self._begin(dst, arrival, batch, arrival)
                else:
                    _heappush(dst.pending, (arrival, next(self.counter), batch))
                    dst.wake_at = arrival
                    _heappush(self.heap, (arrival, next(self.counter), self.on_wake, dst))
        if node.pending or node.decode_q or node.prompt_q:
            self._next_iteration(node, now)

    def _send_outputs(self, node: Node, batch: list[Packet], now: float) -> None:
        """One transfer per next hop, carrying every packet bound there (in batch order)."""
        out: dict[int, list[Packet]] = {}
        for p in batch:
            hop = p.hop = p.hop + 1
            dest = p.route.hops[hop]
            group = out.get(dest)
            if group is None:
                out[dest] = [p]
            else:
                group.append(p)
        links, transfer = node.out, self.transfer
        sent = 0
        for dest, packets in out.items():
            tokens, num_reqs = packets_load(packets)
            sent += num_reqs
            nbytes = self.token_bytes * num_reqs if dest < 0 else self.act_bytes * tokens
            transfer(links[dest], packets, nbytes, num_reqs, now)
        node.queued -= sent


def _partial_s(node: Node, batch: list[Packet]) -> float:
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
        total += (layers - below) * (cost.prompt_s(cum[0], cum[1]) + cost.decode_s(cum[2], cum[3]))
    return total


def _split(packet: Packet, count: int) -> Packet:
    """Take the first `count` requests of a decode packet into a new one (it stays queued)."""
    head, packet.reqs = packet.reqs[:count], packet.reqs[count:]
    ctx = sum(r.prompt + r.done for r in head)
    taken = Packet(head, packet.route, False, count, ctx, 0, packet.step_start)
    taken.hop, taken.arrived = packet.hop, packet.arrived
    packet.tokens -= count
    packet.ctx -= ctx
    return taken
