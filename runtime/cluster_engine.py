"""The coordinator of a sharded cluster: tokenize, route along the max flow, admit by KV room,
dispatch micro-batches, collect sampled tokens, notice dead nodes and move their requests.

It has the LLMEngine interface (add_request / step / abort_request / pop_finished), so `LLM` and the
HTTP server drive a cluster the same way they drive one node.

A request's life:  waiting -> routed (KV reserved on each node of its route) -> passes in flight
-> finished (Release sent along its route). When a node dies, requests routed through it go back to
waiting with `num_computed = 0`: their next pass replays prompt + generated tokens on a new route,
rebuilding the KV there (as Petals does).
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import replace
from typing import Any

from .cluster_state import NO_CAP, ClusterRequest, NodeInfo, wire_params
from .engine import apply_token, prepare_prompt
from .messages import Forward, Heartbeat, Hello, Release, Sampled, SeqWork, Shutdown
from .node_load import Edge, NodeLoad, route_edges
from .outputs import CompletionOutput, RequestOutput
from .routing import FlowRouter
from .sampling_params import SamplingParams
from .sequence import SequenceStatus

log = logging.getLogger("helix.coordinator")
_REASON = {SequenceStatus.FINISHED_STOPPED: "stop", SequenceStatus.FINISHED_LENGTH: "length"}


class ClusterEngine:
    def __init__(
        self,
        nodes: list[NodeInfo],
        flows: list[tuple[str, str, float]],
        tokenizer: Any,
        model_config: Any,
        bind: str,
        max_model_len: int,
        *,
        heartbeat_timeout_s: float = 3.0,
        stall_timeout_s: float = 30.0,
        max_batch_tokens: int = 2048,
        reroute: Any = None,
        max_num_seqs: int | None = None,
        scheduling_policy: str = "fcfs",
        enable_prefix_caching: bool = True,
        pipeline_depth: int | None = None,
    ) -> None:
        """`heartbeat_timeout_s`: a node silent this long is dead (its process stopped or is
        gone; nodes beat from a thread of their own, also during a pass); `stall_timeout_s`: a
        node whose heartbeats report one pass running this long is dead too (a hung pass);
        `max_batch_tokens`: tokens per micro-batch (longer prompts go in chunks);
        `max_num_seqs`: requests routed at once (None: as many as the KV takes);
        `scheduling_policy`: admission order, `fcfs` or `priority` (lower value first, then
        arrival, as in vLLM); `enable_prefix_caching`: let the route's nodes skip prompt blocks
        they hold in their prefix caches (node_prefix.py); `pipeline_depth`: micro-batches in
        flight per first node (None: one per pipeline stage, which keeps every stage busy when
        each node has its own device; see `local_pipeline_depth` for nodes sharing CPU cores)."""
        if scheduling_policy not in ("fcfs", "priority"):
            raise ValueError(
                f"scheduling_policy: expected fcfs or priority, got {scheduling_policy!r}"
            )
        if max_batch_tokens < 1 or (max_num_seqs is not None and max_num_seqs < 1):
            raise ValueError("max_batch_tokens and max_num_seqs must be >= 1")
        if pipeline_depth is not None and pipeline_depth < 1:
            raise ValueError(f"pipeline_depth: must be >= 1, got {pipeline_depth}")
        from .transport import Endpoint

        self.nodes = {n.name: n for n in nodes}
        self.router = FlowRouter(flows)
        self.reroute = reroute
        """Callable(alive node names) -> flows over the survivors; None keeps the old flows."""
        self.tokenizer = tokenizer
        self.model_config = model_config
        self.max_model_len = max_model_len
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.max_batch_tokens = max_batch_tokens
        self.max_num_seqs = max_num_seqs
        self.scheduling_policy = scheduling_policy
        self.enable_prefix_caching = enable_prefix_caching
        self.num_prefix_misses = 0
        """First passes replayed because a node lacked the prefix the first node skipped."""
        self.endpoint = Endpoint(bind)
        self.requests: dict[str, ClusterRequest] = {}
        """Every sample in the engine, by its own id (the request id itself when n == 1)."""
        self.groups: dict[str, list[str]] = {}
        """Request id -> the ids of its samples."""
        self.parent: dict[str, str] = {}
        self._batch_ids = itertools.count(1)
        self._ids = itertools.count()
        self.num_stages = max(1, len({n.layers for n in nodes}))
        self.pipeline_depth = pipeline_depth or self.num_stages
        self.routed: dict[Edge, int] = {}
        self.on_shutdown: Any = None
        self.is_shut_down = False

    # ---- lifecycle ------------------------------------------------------------------------
    def wait_for_nodes(self, timeout_s: float = 120.0, check: Any = None) -> None:
        """Block until every node has said hello (raises TimeoutError naming the missing ones).
        `check()` runs while waiting and may raise (e.g. when a local node process exited)."""
        deadline = time.monotonic() + timeout_s
        while not all(n.alive for n in self.nodes.values()):
            if check is not None:
                check()
            if time.monotonic() > deadline:
                missing = sorted(n.name for n in self.nodes.values() if not n.alive)
                raise TimeoutError(f"nodes did not start within {timeout_s:.0f} s: {missing}")
            self._receive(0.1)

    def close(self) -> None:
        """Stop the cluster: `on_shutdown` (set by whoever started the nodes) or shutdown()."""
        if self.on_shutdown is not None:
            self.on_shutdown()
        else:
            self.shutdown()

    def shutdown(self) -> None:
        """Tell every node to stop and close the coordinator's sockets (once; later calls no-op)."""
        if self.is_shut_down:
            return
        self.is_shut_down = True
        for node in self.nodes.values():
            self.endpoint.send(node.address, Shutdown("coordinator shutting down"))
        time.sleep(0.1)
        self.endpoint.close()

    # ---- requests -------------------------------------------------------------------------
    def add_request(
        self, prompt: Any, params: SamplingParams, request_id: str | None = None
    ) -> str:
        """Queue one prompt. With n > 1 each sample travels as its own sub-request
        (`ID#i`, seed + i), routed on its own; the caller sees one RequestOutput with n outputs."""
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self.groups or request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        text, ids = prepare_prompt(
            self.tokenizer, prompt, self.max_model_len, self.model_config.vocab_size
        )
        members = [request_id] if params.n == 1 else [f"{request_id}#{i}" for i in range(params.n)]
        for index, member in enumerate(members):
            seed = None if params.seed is None else params.seed + index
            sample_params = replace(params, n=1, seed=seed)
            self.requests[member] = ClusterRequest(
                member,
                text,
                list(ids),
                sample_params,
                CompletionOutput(index, logprobs=[] if params.logprobs is not None else None),
                self.tokenizer.detokenizer(ids, params.skip_special_tokens),
                min(params.max_tokens, self.max_model_len - len(ids)),
                tokens=list(ids),
            )
            self.parent[member] = request_id
        self.groups[request_id] = members
        return request_id

    def abort_request(self, request_id: str) -> None:
        for member in self.groups.get(request_id, []):
            request = self.requests[member]
            if not request.finished:
                self._finish(request, "abort")

    def has_unfinished_requests(self) -> bool:
        return any(not r.finished for r in self.requests.values())

    def load_stats(self) -> dict[str, float]:
        """Queue and KV figures for metrics (same keys as LLMEngine.load_stats)."""
        live = [r for r in self.requests.values() if not r.finished]
        blocks = sum(n.num_kv_blocks for n in self.nodes.values() if n.alive)
        reserved = sum(n.reserved_blocks for n in self.nodes.values() if n.alive)
        return {
            "num_requests_running": sum(r.route is not None for r in live),
            "num_requests_waiting": sum(r.route is None for r in live),
            "kv_cache_usage": reserved / blocks if blocks else 0.0,
            "num_preemptions": sum(r.num_reroutes for r in self.requests.values()),
        }

    def node_loads(self) -> list[NodeLoad]:
        """Every node: placement, KV reserved by routed requests, the rate its heartbeats report."""
        return [
            NodeLoad(
                n.name,
                n.gpu_kind,
                n.layers,
                n.reserved_blocks / n.num_kv_blocks if n.num_kv_blocks else 0.0,
                n.tokens_per_s if n.alive else 0.0,
                n.alive,
            )
            for n in self.nodes.values()
        ]

    def routed_counts(self) -> dict[Edge, int]:
        """Requests that crossed each edge (a rerouted request counts on each of its routes)."""
        return dict(self.routed)

    def planned_flows(self) -> dict[Edge, float]:
        """The flows requests are routed by now (re-planned when nodes die or rejoin)."""
        return {(u, v): f for u, edges in self.router.edges.items() for v, f in edges}

    def pop_finished(self) -> list[RequestOutput]:
        done = [
            group
            for group, members in self.groups.items()
            if all(self.requests[m].finished for m in members)
        ]
        outputs = [self._snapshot(group) for group in done]
        for group in done:
            for member in self.groups.pop(group):
                del self.requests[member]
                del self.parent[member]
        return outputs

    # ---- the loop -------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        changed = self._receive(0.0 if self._ready() else 0.05)
        self._check_liveness(changed)
        self._admit(changed)
        self._dispatch()
        groups = {self.parent[r] for r in changed if r in self.parent}
        return [self._snapshot(group) for group in sorted(groups)]

    def idle_tick(self) -> None:
        """Read heartbeats and check liveness while no request runs (nothing to dispatch)."""
        changed = self._receive(0.0)
        self._check_liveness(changed)

    def _ready(self) -> bool:
        return any(r.in_flight is None and not r.finished for r in self.requests.values())

    def _receive(self, timeout_s: float) -> set[str]:
        changed: set[str] = set()
        msg = self.endpoint.recv(timeout_s)
        while msg is not None:
            if isinstance(msg, Sampled):
                changed |= self._on_sampled(msg)
            elif isinstance(msg, (Hello, Heartbeat)):
                self._on_alive(msg)
            msg = self.endpoint.recv(0.0)
        return changed

    def _on_alive(self, msg: Hello | Heartbeat) -> None:
        node = self.nodes.get(msg.node)
        if node is None:
            log.warning("message from unknown node %r", msg.node)
            return
        if isinstance(msg, Hello):
            node.num_kv_blocks, node.block_size = msg.num_kv_blocks, msg.block_size
        else:
            node.tokens_per_s = msg.tokens_per_s
        node.busy_s = msg.busy_s if isinstance(msg, Heartbeat) else 0.0
        if node.busy_s > self.stall_timeout_s:
            return  # a hung pass: let `_check_liveness` mark it (or keep it) dead
        restarted = node.alive and node.incarnation != msg.incarnation
        rejoined = not node.alive or restarted
        node.incarnation, node.last_seen, node.alive = msg.incarnation, time.monotonic(), True
        if restarted:  # a new process under the old name: the KV of its requests is gone
            log.warning("node %s restarted: its requests replay on new routes", node.name)
            for request in self.requests.values():
                if request.route and node.name in request.route and not request.finished:
                    self._unroute(request, f"node {node.name} restarted")
        if rejoined and not restarted and node.reserved_blocks == 0 and self.requests:
            # Back after being marked dead, same process: it still holds the KV of requests
            # that moved to other routes meanwhile; none is routed through it now.
            stale = [i for i, r in self.requests.items() if not r.route or node.name not in r.route]
            if stale:
                self.endpoint.send(node.address, Release(stale))
        if rejoined:
            log.info("node %s joined (incarnation %d)", node.name, msg.incarnation)
            if self.reroute is not None:
                self.router = FlowRouter(self.reroute(self._alive_names()))

    def _alive_names(self) -> set[str]:
        return {n.name for n in self.nodes.values() if n.alive}

    def _on_sampled(self, msg: Sampled) -> set[str]:
        changed = set()
        for request_id, num_held in msg.prefix_misses.items():
            request = self.requests.get(request_id)
            if request is not None and request.in_flight == msg.batch_id:
                # A node lacked part of the prefix the first node skipped: replay from token 0,
                # taking from the caches only what that node holds.
                request.cache_cap = min(num_held, request.cache_cap - 1)
                self.num_prefix_misses += 1
                request.num_computed, request.in_flight, request.params_sent = 0, None, False
        for request_id, num_cached in msg.cached.items():
            request = self.requests.get(request_id)
            if request is not None and request.in_flight == msg.batch_id:
                request.num_cached = num_cached
        for request_id, error in msg.errors.items():
            request = self.requests.get(request_id)
            if request is not None and request.in_flight == msg.batch_id:
                log.warning(
                    "%s failed on %s: %s; replaying on a new route", request_id, msg.node, error
                )
                self._unroute(request, error)
                changed.add(request_id)
        for request_id, num_computed in msg.computed.items():
            request = self.requests.get(request_id)
            if request is None or request.in_flight != msg.batch_id or request.finished:
                continue  # stale: aborted, rerouted or finished meanwhile
            request.in_flight = None
            request.num_computed = num_computed
            if request_id not in msg.tokens:
                continue  # a chunk in the middle of a prompt
            token = msg.tokens[request_id]
            request.tokens.append(token)
            if request.output.logprobs is not None and request_id in msg.logprobs:
                self._record_logprobs(request, token, msg, request_id)
            status = apply_token(
                request.output,
                request.detokenizer,
                token,
                request.params,
                self.model_config.eos_token_ids,
                request.max_tokens,
                len(request.tokens) >= self.max_model_len,
            )
            if status is not None:
                self._finish(request, _REASON.get(status, "stop"))
            changed.add(request_id)
        return changed

    @staticmethod
    def _record_logprobs(request: ClusterRequest, token: int, msg: Sampled, key: str) -> None:
        logprob = float(msg.logprobs[key])
        entry = {token: logprob}
        for alt, value in msg.top_logprobs.get(key, []):
            entry.setdefault(int(alt), float(value))
        output = request.output
        assert output.logprobs is not None
        output.logprobs.append(entry)
        output.cumulative_logprob = (output.cumulative_logprob or 0.0) + logprob

    def _check_liveness(self, changed: set[str]) -> None:
        now = time.monotonic()
        dead = []
        for n in self.nodes.values():
            if not n.alive:
                continue
            if now - n.last_seen > self.heartbeat_timeout_s:
                why = f"missed heartbeats for {now - n.last_seen:.1f} s"
            elif n.busy_s > self.stall_timeout_s:
                why = f"has run one pass for {n.busy_s:.1f} s (stalled)"
            else:
                continue
            log.warning("node %s %s: marked dead", n.name, why)
            n.alive = False
            dead.append(n)
        if not dead:
            return
        names = {n.name for n in dead}
        if self.reroute is not None:
            self.router = FlowRouter(self.reroute(self._alive_names()))
        for request in self.requests.values():
            if request.route and names & set(request.route) and not request.finished:
                self._unroute(request, f"node {sorted(names & set(request.route))} died")
                changed.add(request.request_id)

    def _unroute(self, request: ClusterRequest, reason: str) -> None:
        request.num_reroutes += 1
        self._release(request)
        request.route, request.num_computed, request.in_flight = None, 0, None
        request.params_sent, request.cache_cap = False, NO_CAP
        if request.num_reroutes > 5:
            request.error = f"gave up after {request.num_reroutes} reroutes: {reason}"
            self._finish(request, "error")

    def _admit(self, changed: set[str]) -> None:
        live = [r for r in self.requests.values() if not r.finished]
        num_routed = sum(r.route is not None for r in live)
        waiting = [r for r in live if r.route is None]
        if self.scheduling_policy == "priority":
            waiting.sort(key=lambda r: int(str(r.params.extra.get("priority", 0))))  # stable
        for request in waiting:
            if self.max_num_seqs is not None and num_routed >= self.max_num_seqs:
                return
            num_tokens = len(request.prompt_token_ids) + request.max_tokens

            def fits(name: str, num_tokens: int = num_tokens) -> bool:
                node = self.nodes[name]
                blocks = -(-num_tokens // node.block_size)
                return node.alive and node.reserved_blocks + blocks <= node.num_kv_blocks

            # The plan's flows are tokens/s through each edge; a request's share of them is the
            # tokens it will run on its route: the prompt (or a replay) and what it may generate.
            route = self.router.route(float(num_tokens), fits)
            if route is None:
                if not self._alive_names() or not self._any_route():
                    request.error = "no route through live nodes holds every layer"
                    self._finish(request, "error")
                    changed.add(request.request_id)
                continue  # no KV room now: wait
            request.route, request.reserved = route, num_tokens
            num_routed += 1
            for edge in route_edges(route)[:-1]:
                self.routed[edge] = self.routed.get(edge, 0) + 1
            for name in route:
                node = self.nodes[name]
                node.reserved_blocks += -(-num_tokens // node.block_size)

    def _any_route(self) -> bool:
        return self.router.route(0.0, lambda name: self.nodes[name].alive) is not None

    def _dispatch(self) -> None:
        ready = [
            r
            for r in self.requests.values()
            if r.route is not None and r.in_flight is None and not r.finished
        ]
        if not ready:
            return
        by_first: dict[str, list[ClusterRequest]] = {}
        in_flight: dict[str, set[int]] = {}
        for request in self.requests.values():
            if request.route is not None and request.in_flight is not None:
                in_flight.setdefault(request.route[0], set()).add(request.in_flight)
        for request in ready:
            by_first.setdefault(request.route[0], []).append(request)  # type: ignore[index]
        for first, group in by_first.items():
            # NOTE(helix): `pipeline_depth` micro-batches in flight (one per stage unless set)
            # keep every stage busy. A batch that comes back is sent on whole: splitting every
            # return would halve the batches each round until every request travels alone.
            free = self.pipeline_depth - len(in_flight.get(first, ()))
            for part in micro_batches(group, free):
                self._send_batch(first, part)

    def _send_batch(self, first: str, group: list[ClusterRequest]) -> None:
        batch_id = next(self._batch_ids)
        work: list[SeqWork] = []
        budget = self.max_batch_tokens
        for request in group:
            remaining = len(request.tokens) - request.num_computed
            if budget <= 0:
                break
            n = min(remaining, budget)
            chunk = request.tokens[request.num_computed : request.num_computed + n]
            work.append(
                SeqWork(
                    request.request_id,
                    request.num_computed,
                    n,
                    chunk,
                    list(request.route or []),
                    0,
                    n == remaining,
                    None if request.params_sent else wire_params(request.params),
                    cache_cap=self._cache_cap(request),
                )
            )
            request.params_sent = True
            request.in_flight = batch_id
            budget -= n
        if work and not self.endpoint.send(self.nodes[first].address, Forward(batch_id, work)):
            for request in group:
                if request.in_flight == batch_id:
                    request.in_flight = None

    def _cache_cap(self, request: ClusterRequest) -> int:
        if not self.enable_prefix_caching or request.num_computed > 0:
            return -1
        return request.cache_cap

    def _finish(self, request: ClusterRequest, reason: str) -> None:
        request.output.finish_reason = reason
        if request.route:
            edge = route_edges(request.route)[-1]
            self.routed[edge] = self.routed.get(edge, 0) + 1
        self._release(request)

    def _release(self, request: ClusterRequest) -> None:
        for name in request.route or []:
            node = self.nodes[name]
            node.reserved_blocks -= -(-request.reserved // node.block_size)
            if node.alive:
                self.endpoint.send(node.address, Release([request.request_id]))
        request.reserved = 0

    def _snapshot(self, group: str) -> RequestOutput:
        members = [self.requests[m] for m in self.groups[group]]
        first = members[0]
        return RequestOutput(
            group,
            first.prompt,
            first.prompt_token_ids,
            [m.output for m in members],
            all(m.finished for m in members),
            next((m.error for m in members if m.error), None),
            num_cached_tokens=first.num_cached,
        )


def micro_batches(group: list[ClusterRequest], free: int) -> list[list[ClusterRequest]]:
    """Split the ready requests of one first node into micro-batches that each follow one route.

    A batch whose requests part ways at a later node comes back in pieces at different times,
    and each piece would go out again as its own batch: the batches in flight would multiply and
    shrink (measured: four passes of 6-10 requests per decode step on `a` instead of two of 16
    when `a` feeds two nodes). So requests of different routes never share a batch. `free` batch
    slots (at least one batch per route) go first to the routes whose batches would be biggest;
    within a route requests are dealt out in turn, as before.
    """
    by_route: dict[tuple[str, ...], list[ClusterRequest]] = {}
    for request in group:
        by_route.setdefault(tuple(request.route or ()), []).append(request)
    routes = list(by_route.values())
    counts = [1] * len(routes)
    for _ in range(free - len(routes)):
        best = max(range(len(routes)), key=lambda i: len(routes[i]) / counts[i])
        if counts[best] >= len(routes[best]):
            break
        counts[best] += 1
    return [
        requests[part::count] for requests, count in zip(routes, counts) for part in range(count)
    ]
