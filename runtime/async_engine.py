"""AsyncEngine: one LLMEngine driven by one background thread, awaited from asyncio.

The LLMEngine is single-threaded, so every engine call happens on the engine thread. Callers
(any thread, any event loop) hand work over through a thread-safe command queue, and the thread
hands results back through each caller's own asyncio.Queue:

    caller (event loop)                          engine thread (owns the LLMEngine)
    generate() --_Add-----> commands ----------> add_request | abort_request
    abort()    --_Abort---> (queue.SimpleQueue)  step() -> pop_finished() -> _publish_stats()
    sink.get() <--- loop.call_soon_threadsafe -- snapshot | ValueError | RuntimeError

The thread blocks on the command queue while there is nothing to run, so an idle server costs
no CPU.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .node_load import Edge, NodeLoad
from .outputs import RequestOutput
from .sampling_params import SamplingParams

if TYPE_CHECKING:
    from .engine import LLMEngine
    from .engine_config import EngineConfig

logger = logging.getLogger(__name__)
Prompt = str | list[int] | dict[str, Any]
_ACCEPTED = "accepted"


@dataclass
class _Add:
    prompt: Prompt
    params: SamplingParams
    request_id: str
    loop: asyncio.AbstractEventLoop
    sink: asyncio.Queue[Any]
    num_tokens: int = 0
    """Generated tokens delivered so far, summed over the request's completions."""
    is_counted: bool = False
    """Its prompt has entered the prefix-cache query/hit counters."""


@dataclass
class _Abort:
    request_id: str


@dataclass
class _Stop:
    pass


@dataclass
class _Counters:
    num_prefix_cache_queries: int = 0
    num_prefix_cache_hits: int = 0
    num_generation_tokens: int = 0
    recent: deque[tuple[float, int]] = field(default_factory=deque)
    """(monotonic time, tokens generated in that step) over the last rate window."""


class AsyncEngine:
    """Owns an LLMEngine and its step-loop thread; `generate` streams snapshots to asyncio.

    Contract: snapshots handed out are copies that the engine never mutates again. A request
    whose consumer stops iterating (cancelled, closed, or an exception) is aborted, so its KV
    blocks are freed. After `shutdown`, or after the step loop crashed, `generate` raises
    RuntimeError.
    """

    def __init__(self, engine: LLMEngine, rate_window_s: float = 10.0) -> None:
        self.engine = engine
        self.rate_window_s = rate_window_s
        self.idle_tick_s = 0.5
        self._commands: queue.SimpleQueue[_Add | _Abort | _Stop] = queue.SimpleQueue()
        self._sinks: dict[str, _Add] = {}  # engine thread only
        self._counters = _Counters()  # engine thread only
        self._error: BaseException | None = None
        self._is_stopping = False
        self._stats: dict[str, float] = {}
        self._topology: Topology = Topology([], {}, {})
        self._publish_stats()
        self._thread = threading.Thread(target=self._run, name="helix-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, config: EngineConfig) -> AsyncEngine:
        from .engine import LLMEngine

        return cls(LLMEngine(config))

    # ---- read-only facts, fixed after construction ---------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return int(self.engine.max_model_len)

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive() and self._error is None and not self._is_stopping

    # ---- caller side -----------------------------------------------------------------------
    async def generate(
        self, prompt: Prompt, params: SamplingParams, request_id: str | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Yield a snapshot after each change of the request, the last one finished.

        Raises ValueError when the engine rejects the request, RuntimeError when it is down.
        """
        if not self.is_alive:
            raise RuntimeError(f"the engine is not running ({self._error or 'shut down'})")
        request_id = request_id or f"req-{uuid.uuid4().hex}"
        sink: asyncio.Queue[Any] = asyncio.Queue()
        self._commands.put(_Add(prompt, params, request_id, asyncio.get_running_loop(), sink))
        is_done = False
        try:
            while True:
                item = await sink.get()
                if isinstance(item, BaseException):
                    is_done = True
                    raise item
                if isinstance(item, RequestOutput):
                    yield item
                    if item.finished:
                        is_done = True
                        return
        finally:
            if not is_done:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        """Ask the engine to drop a request and free its blocks (no-op when unknown)."""
        if self._thread.is_alive():
            self._commands.put(_Abort(request_id))

    def stats(self) -> dict[str, float]:
        """The latest engine counters as a plain dict (published by the engine thread)."""
        return dict(self._stats)

    def topology(self) -> Topology:
        """The latest per-node loads, routed-request counts and planned flows."""
        return self._topology

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Abort everything in flight, stop the thread and wait for it."""
        self._is_stopping = True
        if self._thread.is_alive():
            self._commands.put(_Stop())
            self._thread.join(timeout_s)
        close = getattr(self.engine, "close", None)
        if close is not None:  # a cluster coordinator also stops its node processes
            close()

    # ---- engine thread ---------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                busy = self.engine.has_unfinished_requests()
                commands = [] if busy else self._wait_idle()
                while True:
                    try:
                        commands.append(self._commands.get_nowait())
                    except queue.Empty:
                        break
                if any(isinstance(c, _Stop) for c in commands):
                    self._stop(commands)
                    return
                for command in commands:
                    self._apply(command)
                if self.engine.has_unfinished_requests():
                    self._deliver_all(self.engine.step())
                self._deliver_all(self.engine.pop_finished())
                self._publish_stats()
        except Exception as exc:  # a crashed step: fail every caller, never hang them
            logger.exception("engine step loop failed")
            self._error = exc
            for add in list(self._sinks.values()):
                self._send(add, RuntimeError(f"engine failed: {exc}"))
            self._sinks.clear()
            self._publish_stats()
            self._refuse_until_stopped(RuntimeError(f"engine failed: {exc}"))

    def _wait_idle(self) -> list[_Add | _Abort | _Stop]:
        """Block for the next command; an engine with `idle_tick` (a cluster coordinator reading
        heartbeats) gets one every `idle_tick_s` meanwhile."""
        tick = getattr(self.engine, "idle_tick", None)
        if tick is None:
            return [self._commands.get()]
        try:
            return [self._commands.get(timeout=self.idle_tick_s)]
        except queue.Empty:
            tick()
            return []

    def _refuse_until_stopped(self, error: RuntimeError) -> None:
        while not isinstance(command := self._commands.get(), _Stop):
            if isinstance(command, _Add):
                self._send(command, error)

    def _apply(self, command: _Add | _Abort | _Stop) -> None:
        if isinstance(command, _Abort):
            self.engine.abort_request(command.request_id)
            return
        if not isinstance(command, _Add):
            return
        try:
            self.engine.add_request(command.prompt, command.params, command.request_id)
        except ValueError as exc:
            self._send(command, exc)
            return
        except Exception as exc:  # an engine bug must not take every other request down
            logger.exception("add_request failed for %s", command.request_id)
            self._send(command, RuntimeError(f"engine could not add the request: {exc}"))
            return
        self._sinks[command.request_id] = command
        self._send(command, _ACCEPTED)

    def _stop(self, commands: list[_Add | _Abort | _Stop]) -> None:
        for command in commands:
            if isinstance(command, _Add):
                self._send(command, RuntimeError("the engine shut down"))
        for request_id in list(self._sinks):
            self.engine.abort_request(request_id)
        self._deliver_all(self.engine.pop_finished())
        for add in list(self._sinks.values()):
            self._send(add, RuntimeError("the engine shut down"))
        self._sinks.clear()
        self._publish_stats()

    def _deliver_all(self, outputs: list[RequestOutput]) -> None:
        now = time.monotonic()
        for output in outputs:
            add = self._sinks.get(output.request_id)
            if add is None:
                continue  # already finished and delivered, or its caller failed
            if not add.is_counted and any(o.token_ids for o in output.outputs):
                add.is_counted = True
                self._counters.num_prefix_cache_queries += len(output.prompt_token_ids)
                self._counters.num_prefix_cache_hits += output.num_cached_tokens
            num_tokens = sum(len(o.token_ids) for o in output.outputs)
            if num_tokens > add.num_tokens:
                self._counters.num_generation_tokens += num_tokens - add.num_tokens
                self._counters.recent.append((now, num_tokens - add.num_tokens))
                add.num_tokens = num_tokens
            if output.finished:
                del self._sinks[output.request_id]
            self._send(add, _snapshot(output))

    def _send(self, add: _Add, item: object) -> None:
        try:
            add.loop.call_soon_threadsafe(add.sink.put_nowait, item)
        except RuntimeError:  # the caller's event loop is closed: nobody is listening
            if self._sinks.pop(add.request_id, None) is not None:
                self.engine.abort_request(add.request_id)

    def _publish_stats(self) -> None:
        load = self.engine.load_stats()
        self._topology = Topology(
            self.engine.node_loads(), self.engine.routed_counts(), self.engine.planned_flows()
        )
        counters = self._counters
        horizon = time.monotonic() - self.rate_window_s
        while counters.recent and counters.recent[0][0] < horizon:
            counters.recent.popleft()
        self._stats = {  # NOTE(helix): one assignment, so readers never see a half-built dict
            "num_requests_running": load["num_requests_running"],
            "num_requests_waiting": load["num_requests_waiting"],
            "num_requests_in_flight": len(self._sinks),
            "kv_cache_usage": load["kv_cache_usage"],
            "num_preemptions": load["num_preemptions"],
            "prefix_cache_queries": counters.num_prefix_cache_queries,
            "prefix_cache_hits": counters.num_prefix_cache_hits,
            "generation_tokens": counters.num_generation_tokens,
            "tokens_per_second": sum(n for _, n in counters.recent) / self.rate_window_s,
        }


@dataclass(frozen=True)
class Topology:
    """What the engine thread publishes about the nodes behind it (replaced whole, never edited)."""

    nodes: list[NodeLoad]
    routed: dict[Edge, int]
    """Requests that crossed each edge so far."""
    planned: dict[Edge, float]
    """Tokens/s the current plan sends over each edge (empty for one node)."""


def _snapshot(output: RequestOutput) -> RequestOutput:
    """Copy what the engine mutates in place (each completion's text, token ids, logprobs)."""
    completions = [
        replace(
            c,
            token_ids=list(c.token_ids),
            logprobs=None if c.logprobs is None else list(c.logprobs),
        )
        for c in output.outputs
    ]
    return replace(output, prompt_token_ids=list(output.prompt_token_ids), outputs=completions)
