"""Randomised runs on tiny pools: arrivals, shared prefixes, aborts, forks and pipelined steps.

Whatever happens, every request finishes, no block leaks, and every invariant holds after every
step.
"""

from __future__ import annotations

import random
from collections import deque

import pytest

from helix.runtime.block_pool import BlockPool
from helix.runtime.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from helix.runtime.sequence import Sequence, SequenceStatus

NUM_REQUESTS = 40
MAX_STEPS = 3000


def _random_sequence(rng: random.Random, index: int, prefixes: list[list[int]]) -> Sequence:
    prompt = rng.choice(prefixes)[: rng.randint(1, 20)] + [rng.randrange(1000)]
    return Sequence(
        f"r{index}",
        prompt,
        max_tokens=rng.randint(1, 8),
        priority=rng.randint(0, 3),
        cache_salt=rng.choice([None, None, "tenant"]),
    )


def _finish_done(scheduler: Scheduler, updated: list[Sequence]) -> None:
    for seq in updated:
        if seq.num_output_tokens >= seq.max_tokens and not seq.is_finished:
            scheduler.finish(seq.request_id, SequenceStatus.FINISHED_LENGTH)


@pytest.mark.parametrize("seed", range(16))
def test_random_workload_always_completes(seed: int) -> None:
    rng = random.Random(seed)
    config = SchedulerConfig(
        max_num_batched_tokens=rng.choice([8, 16, 32]),
        max_num_seqs=rng.choice([2, 4, 8]),
        block_size=4,
        enable_chunked_prefill=rng.random() < 0.8,
        policy=rng.choice(["fcfs", "priority"]),
    )
    pool = BlockPool(rng.choice([6, 8, 12]), block_size=4, enable_prefix_caching=seed % 4 != 3)
    scheduler = Scheduler(config, pool)
    pipeline_depth = rng.choice([1, 2])
    prefixes = [[rng.randrange(1000) for _ in range(20)] for _ in range(3)]
    added: list[Sequence] = []
    in_flight: deque[SchedulerOutput] = deque()

    for _ in range(MAX_STEPS):
        if len(added) < NUM_REQUESTS and rng.random() < 0.5:
            added.append(_random_sequence(rng, len(added), prefixes))
            scheduler.add(added[-1])
        if added and rng.random() < 0.03:
            scheduler.abort(rng.choice(added).request_id)
        if not in_flight and scheduler.running and rng.random() < 0.1:
            parent = rng.choice(scheduler.running)
            child = Sequence(
                f"{parent.request_id}+{len(added)}",
                parent.prompt_token_ids,
                max_tokens=parent.max_tokens,
                cache_salt=parent.cache_salt,
            )
            child.append_tokens(parent.output_token_ids)
            added.append(child)
            scheduler.fork(parent.request_id, child)
        in_flight.append(scheduler.schedule())
        if len(in_flight) >= pipeline_depth:
            out = in_flight.popleft()
            sampled = {seq.request_id: [rng.randrange(1000)] for seq, _ in out.scheduled}
            _finish_done(scheduler, scheduler.update_from_output(out, sampled))
        scheduler.check_integrity()
        if len(added) >= NUM_REQUESTS and not scheduler.has_unfinished():
            break
    else:
        pytest.fail(f"not done after {MAX_STEPS} steps: {len(scheduler.requests)} left")

    assert all(seq.is_finished for seq in added)
    for seq in added:
        if seq.status is SequenceStatus.FINISHED_LENGTH:
            assert seq.num_output_tokens == seq.max_tokens
        assert seq.block_table == []
    assert pool.num_free_blocks == pool.num_blocks
