"""A per-node request: its tokens, status, block table and `num_*` counters.

Each pipeline node keeps its own `Sequence`, because its KV cache covers only its layers. The
scheduler appends tokens and moves `status`; only `KVCacheManager` edits `block_table`,
`block_hashes` and the `num_computed_tokens`/`num_cached_tokens` counters.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from .block_hash import BlockHash


class SequenceStatus(enum.IntEnum):
    """Lifecycle state; ordered so that finished <=> `status > PREEMPTED`."""

    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5
    FINISHED_ERROR = 6

    @property
    def is_finished(self) -> bool:
        return self > SequenceStatus.PREEMPTED


_FINISH_REASONS = {
    SequenceStatus.FINISHED_STOPPED: "stop",
    SequenceStatus.FINISHED_LENGTH: "length",
    SequenceStatus.FINISHED_ABORTED: "abort",
    SequenceStatus.FINISHED_ERROR: "error",
}


@dataclass(eq=False)
class Sequence:
    """One request as seen by one engine node. Compared and hashed by identity."""

    request_id: str
    """Unique id, shared by every node that serves this request."""
    prompt_token_ids: list[int]
    """Prompt tokens; copied on construction so the caller's list is never aliased."""
    max_tokens: int = 16
    """Most output tokens; sizes the admission check against the KV pool."""
    priority: int = 0
    """Lower is served first under the `priority` policy (vLLM's convention)."""
    arrival_time: float = field(default_factory=time.monotonic)
    """Monotonic seconds; breaks priority ties and orders FCFS preemption."""
    cache_salt: str | None = None
    """Isolates this tenant's prefix-cache hits from everyone else's."""
    params: object = None
    """Opaque sampling parameters, carried for the sampler and never read here."""

    output_token_ids: list[int] = field(default_factory=list, init=False)
    all_token_ids: list[int] = field(default_factory=list, init=False)
    """Prompt followed by outputs; kept in step with both lists by `append_tokens`."""
    status: SequenceStatus = field(default=SequenceStatus.WAITING, init=False)
    block_table: list[int] = field(default_factory=list, init=False)
    """KV block ids on this node, in token order."""
    block_hashes: list[BlockHash] = field(default_factory=list, init=False)
    """Chained hashes of the full blocks of `all_token_ids`, filled lazily by the KV manager."""
    num_computed_tokens: int = field(default=0, init=False)
    """Leading tokens whose KV sits in `block_table` (prefix hits included)."""
    num_cached_tokens: int = field(default=0, init=False)
    """Tokens served by prefix-cache hits at the latest admission."""
    num_preemptions: int = field(default=0, init=False)
    error_message: str | None = field(default=None, init=False)
    """Why the request ended in FINISHED_ERROR."""

    def __post_init__(self) -> None:
        if not self.request_id:
            raise ValueError("request_id must be a non-empty string")
        if not self.prompt_token_ids:
            raise ValueError(f"prompt_token_ids of {self.request_id!r} must not be empty")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        self.prompt_token_ids = list(self.prompt_token_ids)
        self.all_token_ids = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        """Tokens still to run through the model before the next sample."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def last_token_id(self) -> int:
        return self.all_token_ids[-1]

    @property
    def is_prefill(self) -> bool:
        return self.num_computed_tokens < self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def finish_reason(self) -> str | None:
        """OpenAI-style reason ("stop", "length", "abort", "error"), or None while unfinished."""
        return _FINISH_REASONS.get(self.status)

    def append_tokens(self, token_ids: Iterable[int]) -> None:
        """Record sampled tokens; their KV is computed by a later step."""
        for token_id in token_ids:
            self.output_token_ids.append(token_id)
            self.all_token_ids.append(token_id)

    def __len__(self) -> int:
        return self.num_tokens
