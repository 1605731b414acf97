"""Scheduler: token budgets, chunked prefill, preemption by recompute, policies, forks, errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from helix.runtime.block_pool import BlockPool
from helix.runtime.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from helix.runtime.sequence import Sequence, SequenceStatus

SchedulerFactory = Callable[..., Scheduler]
SAMPLED_TOKEN = 7


def _seq(request_id: str, num_prompt_tokens: int, start: int = 0, **kwargs: Any) -> Sequence:
    return Sequence(request_id, list(range(start, start + num_prompt_tokens)), **kwargs)


def _step(scheduler: Scheduler) -> SchedulerOutput:
    """One fake engine step: every sequence that computed its last token samples token 7."""
    out = scheduler.schedule()
    sampled = {seq.request_id: [SAMPLED_TOKEN] for seq, _ in out.scheduled}
    for seq in scheduler.update_from_output(out, sampled):
        if seq.num_output_tokens >= seq.max_tokens:
            scheduler.finish(seq.request_id, SequenceStatus.FINISHED_LENGTH)
    scheduler.check_integrity()
    return out


def _drive(scheduler: Scheduler, max_steps: int = 500) -> list[SchedulerOutput]:
    outputs: list[SchedulerOutput] = []
    while scheduler.has_unfinished():
        assert len(outputs) < max_steps, "scheduler stopped making progress"
        outputs.append(_step(scheduler))
    return outputs


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_num_batched_tokens": 0}, "max_num_batched_tokens"),
        ({"max_num_seqs": -1}, "max_num_seqs"),
        ({"block_size": 0}, "block_size"),
        ({"long_prefill_token_threshold": -1}, "long_prefill_token_threshold"),
        ({"long_prefill_token_threshold": 4, "enable_chunked_prefill": False}, "long_prefill"),
        ({"policy": "sjf"}, "policy"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SchedulerConfig(**kwargs)


def test_scheduler_rejects_a_pool_with_another_block_size() -> None:
    with pytest.raises(ValueError, match="block_size"):
        Scheduler(SchedulerConfig(block_size=16), BlockPool(4, block_size=4))


def test_chunked_prefill_splits_a_long_prompt_under_the_budget(
    make_scheduler: SchedulerFactory,
) -> None:
    scheduler = make_scheduler(num_blocks=10, max_num_batched_tokens=8)
    seq = _seq("a", 20, max_tokens=3)
    scheduler.add(seq)
    expected = [(8, [0, 1]), (8, [2, 3]), (4, [4]), (1, [5])]
    for step, (num_tokens, new_block_ids) in enumerate(expected):
        out = _step(scheduler)
        assert out.num_scheduled_tokens == {"a": num_tokens}
        assert out.new_block_ids == {"a": new_block_ids}
        assert out.new_request_ids == (["a"] if step == 0 else [])
    # Samples of the two partial chunks were dropped; the full prompt and one decode sampled.
    assert seq.output_token_ids == [SAMPLED_TOKEN, SAMPLED_TOKEN]
    assert seq.num_computed_tokens == 21


def test_running_first_then_waiting_fill_the_budget(make_scheduler: SchedulerFactory) -> None:
    scheduler = make_scheduler(num_blocks=10, max_num_batched_tokens=8)
    scheduler.add(_seq("a", 6))
    scheduler.add(_seq("b", 6, start=100))
    assert _step(scheduler).num_scheduled_tokens == {"a": 6, "b": 2}
    assert _step(scheduler).num_scheduled_tokens == {"a": 1, "b": 4}
    assert _step(scheduler).num_scheduled_tokens == {"a": 1, "b": 1}


def test_long_prefill_threshold_caps_one_sequence(make_scheduler: SchedulerFactory) -> None:
    scheduler = make_scheduler(max_num_batched_tokens=16, long_prefill_token_threshold=4)
    scheduler.add(_seq("a", 10))
    scheduler.add(_seq("b", 3, start=100))
    assert _step(scheduler).num_scheduled_tokens == {"a": 4, "b": 3}
    assert _step(scheduler).num_scheduled_tokens == {"a": 4, "b": 1}
    assert _step(scheduler).num_scheduled_tokens == {"a": 2, "b": 1}


def test_without_chunking_a_prompt_runs_whole_or_waits(make_scheduler: SchedulerFactory) -> None:
    scheduler = make_scheduler(max_num_batched_tokens=8, enable_chunked_prefill=False)
    scheduler.add(_seq("a", 6))
    scheduler.add(_seq("b", 6, start=100))
    too_long = _seq("c", 9, start=200)
    scheduler.add(too_long)
    assert too_long.status is SequenceStatus.FINISHED_ERROR
    assert too_long.error_message is not None and "step" in too_long.error_message
    out = _step(scheduler)
    assert out.num_scheduled_tokens == {"a": 6} and out.finished_ids == ["c"]
    assert _step(scheduler).num_scheduled_tokens == {"a": 1, "b": 6}


def test_prefix_hits_are_not_scheduled_again(make_scheduler: SchedulerFactory) -> None:
    scheduler = make_scheduler(num_blocks=10, max_num_batched_tokens=32)
    scheduler.add(_seq("a", 10))
    _step(scheduler)
    second = _seq("b", 10)
    scheduler.add(second)
    out = _step(scheduler)
    assert out.num_scheduled_tokens == {"a": 1, "b": 2}  # b hits blocks 0 and 1
    assert out.new_block_ids["b"] == [0, 1, 3] and second.num_cached_tokens == 8


def test_max_num_seqs_limits_admission(make_scheduler: SchedulerFactory) -> None:
    scheduler = make_scheduler(num_blocks=10, max_num_seqs=2)
    for index in range(3):
        scheduler.add(_seq(f"r{index}", 3, start=10 * index))
    assert list(_step(scheduler).num_scheduled_tokens) == ["r0", "r1"]
    assert scheduler.num_waiting == 1


@pytest.mark.parametrize("policy", ["fcfs", "priority"])
@pytest.mark.parametrize("chunked", [True, False])
def test_preemption_under_a_tiny_pool_completes_every_request(
    make_scheduler: SchedulerFactory, policy: str, chunked: bool
) -> None:
    scheduler = make_scheduler(
        num_blocks=6, max_num_batched_tokens=16, policy=policy, enable_chunked_prefill=chunked
    )
    seqs = [_seq(f"r{i}", 5, start=100 * i, max_tokens=8, priority=i % 2) for i in range(5)]
    for seq in seqs:
        scheduler.add(seq)
    outputs = _drive(scheduler)
    assert scheduler.num_preemptions > 0
    assert any(out.preempted_ids for out in outputs)
    for seq in seqs:
        assert seq.status is SequenceStatus.FINISHED_LENGTH
        assert seq.output_token_ids == [SAMPLED_TOKEN] * 8
    assert scheduler.pool.num_free_blocks == 6


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("fcfs", ["low", "high", "mid", "high2"]), ("priority", ["high", "high2", "mid", "low"])],
)
def test_admission_order_follows_the_policy(
    make_scheduler: SchedulerFactory, policy: str, expected: list[str]
) -> None:
    scheduler = make_scheduler(policy=policy, max_num_seqs=1)
    for index, (name, priority) in enumerate([("low", 2), ("high", 0), ("mid", 1), ("high2", 0)]):
        seq = _seq(name, 3, start=10 * index, max_tokens=1, priority=priority)
        seq.arrival_time = float(index)
        scheduler.add(seq)
    admitted = [rid for out in _drive(scheduler) for rid in out.new_request_ids]
    assert admitted == expected


@pytest.mark.parametrize(("policy", "victim"), [("fcfs", "high"), ("priority", "low")])
def test_preemption_victim_follows_the_policy(
    make_scheduler: SchedulerFactory, policy: str, victim: str
) -> None:
    scheduler = make_scheduler(num_blocks=4, max_num_batched_tokens=16, policy=policy)
    low = _seq("low", 4, max_tokens=8, priority=5)
    high = _seq("high", 4, start=100, max_tokens=8, priority=0)
    low.arrival_time, high.arrival_time = 0.0, 1.0
    scheduler.add(low)
    _step(scheduler)  # low is admitted first, so FCFS would preempt high
    scheduler.add(high)
    _drive(scheduler)
    assert {seq.request_id: seq.num_preemptions for seq in (low, high)} == {
        "low": int(victim == "low"),
        "high": int(victim == "high"),
    }
    assert low.output_token_ids == high.output_token_ids == [SAMPLED_TOKEN] * 8


def test_impossible_request_is_finished_with_an_error(make_scheduler: SchedulerFactory) -> None:
    scheduler = make_scheduler(num_blocks=4)
    huge = _seq("huge", 10, max_tokens=10)  # 19 tokens need 5 blocks of 4
    fine = _seq("fine", 10, start=100, max_tokens=4)
    scheduler.add(huge)
    scheduler.add(fine)
    assert huge.status is SequenceStatus.FINISHED_ERROR and huge.finish_reason == "error"
    assert huge.error_message is not None and "5 KV blocks" in huge.error_message
    outputs = _drive(scheduler)
    assert outputs[0].finished_ids == ["huge"]
    assert all("huge" not in out.num_scheduled_tokens for out in outputs)
    assert fine.status is SequenceStatus.FINISHED_LENGTH


def test_sequence_that_outgrows_the_pool_is_stopped(make_scheduler: SchedulerFactory) -> None:
    scheduler = make_scheduler(num_blocks=2)
    seq = _seq("a", 3, max_tokens=2)
    scheduler.add(seq)
    for _ in range(10):  # the caller never finishes it
        out = scheduler.schedule()
        scheduler.update_from_output(out, {"a": [SAMPLED_TOKEN]})
        scheduler.check_integrity()
    assert seq.status is SequenceStatus.FINISHED_ERROR
    assert seq.error_message is not None and "outgrew" in seq.error_message


def test_abort_and_finish(make_scheduler: SchedulerFactory) -> None:
    scheduler = make_scheduler(num_blocks=10, max_num_seqs=1)
    running, waiting = _seq("run", 5), _seq("wait", 5, start=100)
    scheduler.add(running)
    scheduler.add(waiting)
    _step(scheduler)
    assert scheduler.abort("run") and scheduler.abort("wait")
    assert not scheduler.abort("run") and not scheduler.abort("missing")
    assert running.status is SequenceStatus.FINISHED_ABORTED and running.block_table == []
    assert scheduler.schedule().finished_ids == ["run", "wait"]
    assert scheduler.pool.num_free_blocks == 10
    with pytest.raises(KeyError):
        scheduler.finish("run", SequenceStatus.FINISHED_STOPPED)
    scheduler.add(_seq("next", 3))
    with pytest.raises(ValueError, match="FINISHED_"):
        scheduler.finish("next", SequenceStatus.PREEMPTED)


def test_in_flight_sequences_are_not_rescheduled(make_scheduler: SchedulerFactory) -> None:
    scheduler = make_scheduler(num_blocks=10)
    scheduler.add(_seq("a", 5))
    first = scheduler.schedule()
    scheduler.add(_seq("b", 5, start=100))
    second = scheduler.schedule()  # pipelined: `a` has not come back yet
    assert first.num_scheduled_tokens == {"a": 5}
    assert second.num_scheduled_tokens == {"b": 5}
    scheduler.abort("b")
    scheduler.update_from_output(second, {"b": [SAMPLED_TOKEN]})  # ignored: b is gone
    scheduler.update_from_output(first, {"a": [SAMPLED_TOKEN]})
    assert scheduler.schedule().num_scheduled_tokens == {"a": 1}


def test_fork_shares_the_prompt_and_emits_a_copy_op(make_scheduler: SchedulerFactory) -> None:
    scheduler = make_scheduler(num_blocks=10, max_num_batched_tokens=16)
    parent = _seq("p", 10, max_tokens=3)
    scheduler.add(parent)
    _step(scheduler)
    child = _seq("p#1", 10, max_tokens=3)
    child.append_tokens([SAMPLED_TOKEN + 1])
    with pytest.raises(ValueError, match="differs"):
        scheduler.fork("p", _seq("bad", 10, start=1))
    assert "bad" not in scheduler.requests
    scheduler.fork("p", child)
    out = _step(scheduler)
    assert out.block_copies == [(2, 3)]
    assert out.new_request_ids == ["p#1"]
    assert out.new_block_ids == {"p#1": [0, 1, 3]}
    assert out.num_scheduled_tokens == {"p": 1, "p#1": 1}
    _drive(scheduler)
    assert parent.output_token_ids == [SAMPLED_TOKEN] * 3
    assert child.output_token_ids == [SAMPLED_TOKEN + 1, SAMPLED_TOKEN, SAMPLED_TOKEN]


def test_fork_without_free_blocks_falls_back_to_recompute(
    make_scheduler: SchedulerFactory,
) -> None:
    scheduler = make_scheduler(num_blocks=3, max_num_batched_tokens=16)
    parent = _seq("p", 10, max_tokens=2)
    scheduler.add(parent)
    _step(scheduler)
    child = _seq("p#1", 10, max_tokens=2)
    scheduler.fork("p", child)
    assert child.status is SequenceStatus.WAITING and scheduler.num_waiting == 1
    _drive(scheduler)
    assert parent.num_output_tokens == child.num_output_tokens == 2
