"""Fixtures for the torch-free runtime bookkeeping: every pool and scheduler a test builds is
checked with `check_integrity()` when the test ends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from helix.runtime.block_pool import BlockPool
from helix.runtime.scheduler import Scheduler, SchedulerConfig

PoolFactory = Callable[..., BlockPool]
SchedulerFactory = Callable[..., Scheduler]


@pytest.fixture
def make_pool() -> Iterator[PoolFactory]:
    pools: list[BlockPool] = []

    def make(
        num_blocks: int = 10, block_size: int = 4, enable_prefix_caching: bool = True
    ) -> BlockPool:
        pool = BlockPool(num_blocks, block_size, enable_prefix_caching)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.check_integrity()


@pytest.fixture
def make_scheduler() -> Iterator[SchedulerFactory]:
    schedulers: list[Scheduler] = []

    def make(num_blocks: int = 10, block_size: int = 4, **config: Any) -> Scheduler:
        pool = BlockPool(num_blocks, block_size)
        scheduler = Scheduler(SchedulerConfig(block_size=block_size, **config), pool)
        schedulers.append(scheduler)
        return scheduler

    yield make
    for scheduler in schedulers:
        scheduler.check_integrity()
