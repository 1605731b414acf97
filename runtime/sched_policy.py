"""Scheduling policies: the waiting-queue order and the choice of preemption victim.

Strategies live in the `POLICIES` registry, so fair-share or shortest-job-first is one more class.
"""

from __future__ import annotations

import heapq
import itertools
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator

from .sequence import Sequence


class SchedulingPolicy(ABC):
    """Waiting-queue order plus the choice of preemption victim.

    Mutates only its own queue; the scheduler moves statuses and blocks.
    """

    @abstractmethod
    def push(self, seq: Sequence) -> None:
        """Queue a new arrival."""

    @abstractmethod
    def push_front(self, seq: Sequence) -> None:
        """Re-queue a preempted sequence, ahead of new arrivals where the order allows."""

    @abstractmethod
    def peek(self) -> Sequence:
        """The next sequence to admit; the queue must not be empty."""

    @abstractmethod
    def pop(self) -> Sequence:
        """Remove and return `peek()`."""

    @abstractmethod
    def remove(self, seq: Sequence) -> None:
        """Drop a queued sequence (abort); O(n) is fine."""

    @abstractmethod
    def __iter__(self) -> Iterator[Sequence]: ...

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def pick_victim(self, candidates: list[Sequence]) -> Sequence:
        """The sequence to preempt first among non-empty `candidates`, in admission order."""


class FcfsPolicy(SchedulingPolicy):
    """Arrival order; preempts the most recently admitted sequence."""

    def __init__(self) -> None:
        self._queue: deque[Sequence] = deque()

    def push(self, seq: Sequence) -> None:
        self._queue.append(seq)

    def push_front(self, seq: Sequence) -> None:
        self._queue.appendleft(seq)

    def peek(self) -> Sequence:
        return self._queue[0]

    def pop(self) -> Sequence:
        return self._queue.popleft()

    def remove(self, seq: Sequence) -> None:
        self._queue.remove(seq)

    def __iter__(self) -> Iterator[Sequence]:
        return iter(self._queue)

    def __len__(self) -> int:
        return len(self._queue)

    def pick_victim(self, candidates: list[Sequence]) -> Sequence:
        return candidates[-1]


class PriorityPolicy(SchedulingPolicy):
    """Lowest `(priority, arrival_time)` first; preempts the highest such key first."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, float, int, Sequence]] = []
        self._tiebreak = itertools.count()

    def push(self, seq: Sequence) -> None:
        heapq.heappush(self._heap, (seq.priority, seq.arrival_time, next(self._tiebreak), seq))

    def push_front(self, seq: Sequence) -> None:
        self.push(seq)  # the key alone decides

    def peek(self) -> Sequence:
        return self._heap[0][-1]

    def pop(self) -> Sequence:
        return heapq.heappop(self._heap)[-1]

    def remove(self, seq: Sequence) -> None:
        self._heap = [entry for entry in self._heap if entry[-1] is not seq]
        heapq.heapify(self._heap)

    def __iter__(self) -> Iterator[Sequence]:
        return iter([entry[-1] for entry in sorted(self._heap, key=lambda e: e[:3])])

    def __len__(self) -> int:
        return len(self._heap)

    def pick_victim(self, candidates: list[Sequence]) -> Sequence:
        # reversed(): on equal keys the latest admitted goes first.
        return max(reversed(candidates), key=lambda seq: (seq.priority, seq.arrival_time))


POLICIES: dict[str, type[SchedulingPolicy]] = {"fcfs": FcfsPolicy, "priority": PriorityPolicy}
