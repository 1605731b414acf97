"""AsyncEngine against a fake LLMEngine: one engine thread, copies, errors, aborts, idling."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from helix.runtime.async_engine import AsyncEngine
from helix.runtime.node_load import NodeLoad
from helix.runtime.outputs import CompletionOutput, RequestOutput
from helix.runtime.sampling_params import SamplingParams


class _FakeScheduler:
    def __init__(self, engine: _FakeEngine) -> None:
        self.engine, self.num_waiting, self.num_preemptions = engine, 0, 0
        self.pool = type("Pool", (), {"usage": 0.0})()

    @property
    def running(self) -> list[RequestOutput]:
        return [o for o in self.engine.requests.values() if not o.finished]


class _FakeEngine:
    """One token per step per request; mutates its outputs in place like LLMEngine does."""

    def __init__(self, fail_at_step: int | None = None) -> None:
        self.requests: dict[str, RequestOutput] = {}
        self.limits: dict[str, int] = {}
        self.scheduler = _FakeScheduler(self)
        self.tokenizer, self.max_model_len = None, 64
        self.threads: set[int] = set()
        self.num_steps, self.aborted = 0, []
        self.fail_at_step = fail_at_step

    def _seen(self) -> None:
        self.threads.add(threading.get_ident())

    def add_request(self, prompt: Any, params: SamplingParams, request_id: str) -> str:
        self._seen()
        if prompt == "bad":
            raise ValueError("prompt is bad")
        if prompt == "bug":
            raise KeyError("engine bug")
        ids = list(prompt["prompt_token_ids"])
        self.requests[request_id] = RequestOutput(
            request_id, None, ids, [CompletionOutput(0)], num_cached_tokens=len(ids) // 2
        )
        self.limits[request_id] = params.max_tokens
        return request_id

    def has_unfinished_requests(self) -> bool:
        self._seen()
        return any(not o.finished for o in self.requests.values())

    def load_stats(self) -> dict[str, float]:
        s = self.scheduler
        return {"num_requests_running": len(s.running), "num_requests_waiting": s.num_waiting,
                "kv_cache_usage": s.pool.usage, "num_preemptions": s.num_preemptions}

    def node_loads(self) -> list[NodeLoad]:
        return [NodeLoad("fake", "cpu", (0, 1), self.scheduler.pool.usage, 0.0)]

    def routed_counts(self) -> dict:
        return {}

    def planned_flows(self) -> dict:
        return {}

    def step(self) -> list[RequestOutput]:
        self._seen()
        self.num_steps += 1
        if self.num_steps == self.fail_at_step:
            raise RuntimeError("boom")
        changed = []
        for output in self.requests.values():
            if output.finished:
                continue
            completion = output.outputs[0]
            completion.token_ids.append(len(completion.token_ids))
            completion.text += "x"
            if len(completion.token_ids) >= self.limits[output.request_id]:
                completion.finish_reason, output.finished = "length", True
            changed.append(output)
        time.sleep(0.002)
        return changed

    def abort_request(self, request_id: str) -> None:
        self._seen()
        output = self.requests.get(request_id)
        if output is not None and not output.finished:
            output.outputs[0].finish_reason, output.finished = "abort", True
            self.aborted.append(request_id)

    def pop_finished(self) -> list[RequestOutput]:
        self._seen()
        done = [o for o in self.requests.values() if o.finished]
        for output in done:
            del self.requests[output.request_id]
        return done


def _prompt(n: int = 4) -> dict[str, list[int]]:
    return {"prompt_token_ids": list(range(n))}


async def _collect(engine: AsyncEngine, prompt: Any, max_tokens: int) -> list[RequestOutput]:
    params = SamplingParams(max_tokens=max_tokens)
    return [o async for o in engine.generate(prompt, params)]


@pytest.fixture
def fake() -> Any:
    engine = _FakeEngine()
    async_engine = AsyncEngine(engine)  # type: ignore[arg-type]
    yield engine, async_engine
    async_engine.shutdown()


def test_snapshots_are_frozen_copies_from_one_thread(fake: Any) -> None:
    engine, async_engine = fake

    async def run() -> list[list[RequestOutput]]:
        return await asyncio.gather(*(_collect(async_engine, _prompt(), 5) for _ in range(3)))

    for snapshots in asyncio.run(run()):
        counts = [len(s.outputs[0].token_ids) for s in snapshots]
        assert counts == [1, 2, 3, 4, 5]  # later tokens did not leak into earlier snapshots
        assert [s.outputs[0].text for s in snapshots][-1] == "xxxxx"
        assert snapshots[-1].finished and not any(s.finished for s in snapshots[:-1])
    assert len(engine.threads) == 1 and threading.get_ident() not in engine.threads
    # The engine thread publishes stats right after it delivers the last snapshot: poll briefly.
    deadline = time.monotonic() + 5
    stats = async_engine.stats()
    while stats["generation_tokens"] < 15 and time.monotonic() < deadline:
        time.sleep(0.01)
        stats = async_engine.stats()
    assert stats["prefix_cache_queries"] == 12 and stats["prefix_cache_hits"] == 6
    assert stats["generation_tokens"] == 15 and stats["num_requests_in_flight"] == 0


def test_add_error_reaches_the_caller(fake: Any) -> None:
    _, async_engine = fake
    with pytest.raises(ValueError, match="prompt is bad"):
        asyncio.run(_collect(async_engine, "bad", 3))
    assert asyncio.run(_collect(async_engine, _prompt(), 2))[-1].finished  # still serving
    with pytest.raises(RuntimeError, match="engine bug"):
        asyncio.run(_collect(async_engine, "bug", 3))
    assert async_engine.is_alive and asyncio.run(_collect(async_engine, _prompt(), 2))[-1].finished


def test_cancelled_consumer_aborts_its_request(fake: Any) -> None:
    engine, async_engine = fake

    async def run() -> None:
        first = asyncio.Event()

        async def consume() -> None:
            async for _ in async_engine.generate(_prompt(), SamplingParams(max_tokens=10**6)):
                first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    deadline = time.monotonic() + 5
    # The consumer can see its first token before the engine thread publishes stats that count
    # the request as running, so wait for the abort itself, not for the counter to drop.
    while not (engine.aborted and async_engine.stats()["num_requests_running"] == 0):
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert len(engine.aborted) == 1 and async_engine.stats()["num_requests_running"] == 0


def test_idle_loop_does_not_step(fake: Any) -> None:
    engine, async_engine = fake
    asyncio.run(_collect(async_engine, _prompt(), 3))
    steps = engine.num_steps
    time.sleep(0.2)
    assert engine.num_steps == steps


def test_step_crash_fails_callers_and_later_requests() -> None:
    async_engine = AsyncEngine(_FakeEngine(fail_at_step=2))  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(_collect(async_engine, _prompt(), 5))
    assert not async_engine.is_alive
    with pytest.raises(RuntimeError, match="not running"):
        asyncio.run(_collect(async_engine, _prompt(), 5))
    async_engine.shutdown()


def test_shutdown_ends_streams_and_thread() -> None:
    engine = _FakeEngine()
    async_engine = AsyncEngine(engine)  # type: ignore[arg-type]

    async def run() -> RequestOutput:
        seen: list[RequestOutput] = []

        async def consume() -> None:
            async for output in async_engine.generate(_prompt(), SamplingParams(max_tokens=10**6)):
                seen.append(output)

        task = asyncio.create_task(consume())
        while not seen:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(async_engine.shutdown)
        await asyncio.wait_for(task, 5)
        return seen[-1]

    last = asyncio.run(run())
    assert last.finished and last.outputs[0].finish_reason == "abort"
    assert not async_engine._thread.is_alive()
    with pytest.raises(RuntimeError):
        asyncio.run(_collect(async_engine, _prompt(), 2))
