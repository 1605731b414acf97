"""One pipeline node: receive a micro-batch, run its layers with its own paged KV cache, send on.

    coordinator --Forward(tokens)--> node A --Forward(hidden)--> node B --Sampled--> coordinator

Each node keeps, per request, its own block table over its own block pool (its cache covers only its
layers). The route travels in every message, so a node knows where each request goes next; the last
node of a route samples. Bad frames are logged and dropped; the node keeps running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .block_pool import BlockPool, OutOfBlocksError
from .messages import Forward, Heartbeat, Hello, Release, Sampled, SeqWork, Shutdown
from .model_runner import SeqSlice, batch_inputs
from .node_load import TokenRate
from .node_prefix import (
    PrefixState,
    commit,
    first_node_hits,
    later_node_hits,
    num_cached_tokens,
    start_from_cache,
)
from .sampler import prepare, sample
from .sampling_params import SamplingParams
from .wire import from_wire, to_wire

log = logging.getLogger("helix.node")


@dataclass
class _NodeSeq:
    block_table: list[int] = field(default_factory=list)
    num_computed: int = 0
    params: SamplingParams | None = None
    generator: torch.Generator | None = None
    prefix: PrefixState = field(default_factory=PrefixState)


class _PrefixMiss(Exception):
    """This node lacks part of the prefix the route's first node skipped."""

    def __init__(self, num_cached_tokens: int) -> None:
        self.num_cached_tokens = num_cached_tokens


class StageWorker:
    """The compute half of a node: no sockets, so tests can drive it directly."""

    def __init__(
        self, name: str, stage: Any, num_kv_blocks: int, block_size: int, device: torch.device
    ) -> None:
        self.name = name
        self.stage = stage
        self.block_size = block_size
        self.device = device
        self.pool = BlockPool(num_kv_blocks, block_size, enable_prefix_caching=True)
        self.kv_caches = stage.allocate_kv_cache(num_kv_blocks, block_size, device=device)
        self.seqs: dict[str, _NodeSeq] = {}
        self.tokens_done = 0
        self.rate = TokenRate()

    def release(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            seq = self.seqs.pop(request_id, None)
            if seq is not None and seq.block_table:
                self.pool.free([self.pool.blocks[b] for b in seq.block_table])

    def _admit(self, work: SeqWork) -> tuple[_NodeSeq | None, SeqWork, str | None]:
        """The request's state for this pass, the pass itself (the first node of a route may
        shorten it by a cached prefix) or the reason it cannot run. Raises _PrefixMiss."""
        seq = self.seqs.get(work.request_id)
        if seq is None or work.start == 0 or work.prefix_hashes:  # new, or replayed from scratch
            self.release([work.request_id])
            seq = self.seqs[work.request_id] = _NodeSeq()
            seq.prefix.skipped_layers = max(0, work.layer_start - self.stage.start)
        if work.params is not None:
            seq.params = SamplingParams(**work.params)
            salt = seq.params.extra.get("cache_salt")
            seq.prefix.salt = None if salt is None else str(salt)
            if seq.params.seed is not None:
                seq.generator = torch.Generator().manual_seed(seq.params.seed)
        if work.prefix_hashes:  # the route's first node skipped these cached blocks
            hits = later_node_hits(self.pool, seq.prefix, work.prefix_hashes)
            if hits is None:
                raise _PrefixMiss(num_cached_tokens(self.pool, seq.prefix, work.prefix_hashes))
            seq.block_table = start_from_cache(self.pool, seq.prefix, hits, work.prefix_hashes)
            seq.num_computed = len(hits) * self.block_size
        elif work.start == 0 and work.cache_cap > 0:
            hits, hashes = first_node_hits(self.pool, seq.prefix, work.token_ids, work.cache_cap)
            if hits:
                seq.block_table = start_from_cache(self.pool, seq.prefix, hits, hashes)
                skip = seq.num_computed = len(hits) * self.block_size
                work = replace(
                    work,
                    start=skip,
                    num_tokens=work.num_tokens - skip,
                    token_ids=work.token_ids[skip:],
                    prefix_hashes=hashes,
                )
        if work.start != seq.num_computed:
            return (
                None,
                work,
                (
                    f"{self.name}: KV holds {seq.num_computed} tokens of "
                    f"{work.request_id!r} but the pass starts at {work.start}"
                ),
            )
        need = -(-(work.start + work.num_tokens) // self.block_size) - len(seq.block_table)
        if need > 0:
            try:
                seq.block_table += [b.block_id for b in self.pool.allocate(need)]
            except OutOfBlocksError:
                return None, work, f"{self.name}: out of KV blocks"
        return seq, work, None

    @torch.inference_mode()
    def forward(self, msg: Forward) -> tuple[list[tuple[str, Forward]], Sampled | None]:
        """Run a micro-batch: messages for the next nodes, and samples for the coordinator."""
        hidden_in = None if msg.hidden is None else from_wire(msg.hidden, self.device)
        rows, items, works, errors, misses = [], [], [], {}, {}
        offset = 0
        for received in msg.work:
            try:
                seq, work, error = self._admit(received)
            except _PrefixMiss as miss:
                misses[received.request_id] = miss.num_cached_tokens
                self.release([received.request_id])
                offset += received.num_tokens
                continue
            if seq is None:
                errors[work.request_id] = error or "rejected"
                self.release([work.request_id])
            else:
                is_last = work.hop == len(work.route) - 1
                items.append(
                    SeqSlice(
                        work.token_ids,
                        work.start,
                        work.start + work.num_tokens,
                        seq.block_table,
                        is_last and work.sample,
                    )
                )
                works.append(work)
                rows.append((offset, work.num_tokens))
            offset += received.num_tokens  # rows of `hidden_in` (only later nodes get one)
        outgoing: list[tuple[str, Forward]] = []
        tokens: dict[str, int] = {}
        logprobs: dict[str, float] = {}
        top_logprobs: dict[str, list[list[float]]] = {}
        # Requests entering mid-range (partial inference) run only the tail: one pass per entry.
        groups: dict[int, list[int]] = {}
        for i, work in enumerate(works):
            first = max(self.stage.start, work.layer_start)
            groups.setdefault(first, []).append(i)
        for first, members in sorted(groups.items()):
            group = [works[i] for i in members]
            step = batch_inputs([items[i] for i in members], self.block_size, self.device)
            x = (
                step.input_ids
                if hidden_in is None
                else _take_rows(hidden_in, [rows[i] for i in members])
            )
            hidden = self.stage(x, step.positions, self.kv_caches, step.meta, first_layer=first)
            for work in group:
                seq = self.seqs[work.request_id]
                seq.num_computed = work.start + work.num_tokens
                commit(self.pool, seq.prefix, seq.block_table, work.start, work.token_ids)
            self.tokens_done += len(step.positions)
            self.rate.add(len(step.positions))
            if step.sampled_rows:
                new_tokens, new_logprobs, new_top = self._sample(
                    hidden[step.logits_indices], [group[r] for r in step.sampled_rows]
                )
                tokens.update(new_tokens)
                logprobs.update(new_logprobs)
                top_logprobs.update(new_top)
            outgoing += self._pass_on(msg.batch_id, group, hidden)
        computed = {
            w.request_id: w.start + w.num_tokens for w in works if w.hop == len(w.route) - 1
        }
        cached = {
            w.request_id: w.start for w in works if w.prefix_hashes and w.hop == len(w.route) - 1
        }
        sampled = None
        if computed or errors or misses:
            sampled = Sampled(
                msg.batch_id, self.name, tokens, computed, logprobs, errors, top_logprobs,
                cached, misses,
            )  # fmt: skip
        return outgoing, sampled

    def _sample(
        self, hidden: torch.Tensor, works: list[SeqWork]
    ) -> tuple[dict[str, int], dict[str, float], dict[str, list[list[float]]]]:
        logits = self.stage.compute_logits(hidden)  # [S, vocab]
        states = [self.seqs[w.request_id] for w in works]
        params = [s.params or SamplingParams(temperature=0) for s in states]
        result = sample(logits, prepare(params, [s.generator for s in states]))
        tokens = {w.request_id: t for w, t in zip(works, result.token_ids)}
        values = result.logprobs or []
        tops = result.top_logprobs or []
        top = {
            w.request_id: [[t, v] for t, v in pairs[: p.logprobs]]
            for w, p, pairs in zip(works, params, tops)
            if p.logprobs is not None
        }
        return tokens, {w.request_id: v for w, v in zip(works, values)}, top

    def _pass_on(
        self, batch_id: int, works: list[SeqWork], hidden: torch.Tensor
    ) -> list[tuple[str, Forward]]:
        by_next: dict[str, tuple[list[SeqWork], list[torch.Tensor]]] = {}
        offset = 0
        for work in works:
            rows = hidden[offset : offset + work.num_tokens]
            offset += work.num_tokens
            if work.hop == len(work.route) - 1:
                continue
            nxt = work.route[work.hop + 1]
            forwarded = work.next_hop(self.stage.end)
            entry = by_next.setdefault(nxt, ([], []))
            entry[0].append(forwarded)
            entry[1].append(rows)
        return [
            (nxt, Forward(batch_id, w, to_wire(torch.cat(h))))
            for nxt, (w, h) in sorted(by_next.items())
        ]


def _take_rows(hidden: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
    """The rows (offset, count) of `hidden`, in order; `hidden` itself when they are all of it
    in order (the usual pass: every sequence admitted, no partial inference)."""
    expected = 0
    for offset, count in spans:
        if offset != expected:
            break
        expected += count
    else:
        if expected == hidden.shape[0]:
            return hidden
    return hidden[torch.cat([torch.arange(offset, offset + count) for offset, count in spans])]


class _Heartbeats:
    """Sends the node's heartbeats from a thread with a socket of its own, every `period_s`,
    also while a pass runs (a long prefill on a loaded machine is not a dead node). The main
    loop publishes its numbers between passes (`publish`, at most twice a period) and marks
    passes (`pass_started`); the
    heartbeat carries how long the current pass has run, so a pass that hangs is still noticed
    (the coordinator's `stall_timeout_s`), and a process that stops sends nothing."""

    def __init__(
        self, context: Any, coordinator: str, worker: StageWorker, incarnation: int,
        period_s: float,
    ) -> None:  # fmt: skip
        import threading

        self.context, self.coordinator, self.period_s = context, coordinator, period_s
        self.name, self.incarnation = worker.name, incarnation
        self.stats = (worker.pool.num_free_blocks, 0, 0.0)
        self.published = 0.0
        self.pass_started: float | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="helix-heartbeat", daemon=True)

    def publish(self, worker: StageWorker) -> None:
        now = time.monotonic()
        if now - self.published >= self.period_s / 2:  # not every message: the loop is hot
            self.published = now
            rate = worker.rate.per_second(now)
            self.stats = (worker.pool.num_free_blocks, len(worker.seqs), rate)

    def _run(self) -> None:
        import zmq

        from .messages import encode

        socket = self.context.socket(zmq.PUSH)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SNDHWM, 100)
        socket.connect(self.coordinator)
        try:
            while not self.stop.wait(self.period_s):
                started = self.pass_started
                busy = 0.0 if started is None else time.monotonic() - started
                beat = Heartbeat(self.name, self.incarnation, *self.stats, busy_s=busy)
                with contextlib.suppress(zmq.Again):  # coordinator gone or slow: beat again later
                    socket.send_multipart(encode(beat), flags=zmq.NOBLOCK)
        finally:
            socket.close(0)


def serve_node(
    name: str,
    bind: str,
    coordinator: str,
    peers: dict[str, str],
    stage: Any,
    num_kv_blocks: int,
    block_size: int,
    device: torch.device,
    heartbeat_s: float = 0.5,
) -> None:
    """The node's loop: PULL on `bind`, PUSH to peers and the coordinator, until Shutdown."""
    from .transport import Endpoint

    worker = StageWorker(name, stage, num_kv_blocks, block_size, device)
    incarnation = int(time.time() * 1e6) ^ os.getpid()
    hello = Hello(name, stage.start, stage.end, num_kv_blocks, block_size, incarnation)
    with Endpoint(bind) as endpoint:
        endpoint.send(coordinator, hello)  # before the first heartbeat (one period later)
        beats = _Heartbeats(endpoint.context, coordinator, worker, incarnation, heartbeat_s)
        beats.thread.start()
        try:
            while True:
                msg = endpoint.recv(timeout_s=heartbeat_s)
                if isinstance(msg, Forward):
                    beats.pass_started = time.monotonic()
                    outgoing, sampled = worker.forward(msg)
                    beats.pass_started = None
                    for nxt, fwd in outgoing:
                        if nxt not in peers:
                            log.error("%s: no address for next node %r", name, nxt)
                            continue
                        endpoint.send(peers[nxt], fwd)
                    if sampled is not None:
                        endpoint.send(coordinator, sampled)
                elif isinstance(msg, Release):
                    worker.release(msg.request_ids)
                elif isinstance(msg, Shutdown):
                    log.info("%s: shutdown (%s)", name, msg.reason)
                    return
                beats.publish(worker)
        finally:
            beats.stop.set()
            beats.thread.join(timeout=5)
