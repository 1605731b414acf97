"""Token-budget scheduler of one engine node, in the style of vLLM v1.

There are no prefill or decode phases. A step is `{request_id: num_tokens}` under a token budget:
running sequences first (a decode is one token, a chunked prefill the rest of its prompt), then
waiting ones in policy order. When blocks run out, a victim is preempted by recompute: its blocks
are freed and it goes back to the front of the waiting queue, where prefix hits usually recover
most of its KV.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .block_pool import BlockPool
from .kv_cache import BlockCopy, KVCacheManager
from .sched_policy import POLICIES
from .sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class SchedulerConfig:
    """Limits and policy of one node's scheduler (vLLM flag names, without the dashes)."""

    max_num_batched_tokens: int = 2048
    """Token budget of one step, summed over all scheduled sequences."""
    max_num_seqs: int = 64
    """Most sequences running at once."""
    block_size: int = 16
    """Tokens per KV block; must equal the pool's."""
    enable_chunked_prefill: bool = True
    """Let a prompt span several steps. Off, a new prompt runs whole in one step or waits."""
    long_prefill_token_threshold: int = 0
    """Most tokens one sequence may take per step; 0 leaves only the step budget."""
    policy: str = "fcfs"
    """Waiting-queue order and preemption victim choice, a key of `POLICIES`."""

    def __post_init__(self) -> None:
        for name in ("max_num_batched_tokens", "max_num_seqs", "block_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.long_prefill_token_threshold < 0:
            threshold = self.long_prefill_token_threshold
            raise ValueError(f"long_prefill_token_threshold must be >= 0, got {threshold}")
        if self.long_prefill_token_threshold and not self.enable_chunked_prefill:
            raise ValueError("long_prefill_token_threshold needs enable_chunked_prefill=True")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {sorted(POLICIES)}, got {self.policy!r}")


@dataclass
class SchedulerOutput:
    """One step's contract with the worker, carrying diffs.

    The worker applies `block_copies` before running the step. Sequences in `new_request_ids`
    were (re)admitted this step: send their full data, and `new_block_ids` holds their whole block
    table. For the others `new_block_ids` holds only the blocks appended this step.
    """

    scheduled: list[tuple[Sequence, int]] = field(default_factory=list)
    new_request_ids: list[str] = field(default_factory=list)
    new_block_ids: dict[str, list[int]] = field(default_factory=dict)
    preempted_ids: list[str] = field(default_factory=list)
    finished_ids: list[str] = field(default_factory=list)
    block_copies: list[BlockCopy] = field(default_factory=list)

    @property
    def num_scheduled_tokens(self) -> dict[str, int]:
        return {seq.request_id: num_tokens for seq, num_tokens in self.scheduled}

    @property
    def total_num_scheduled_tokens(self) -> int:
        return sum(num_tokens for _, num_tokens in self.scheduled)


class Scheduler:
    """Owns the node's KV manager, waiting queue and running list. Single-threaded.

    Every request is in exactly one of the waiting queue or `running` until it finishes. The
    caller decides when a request stops (`finish`); `schedule` finishes one with FINISHED_ERROR
    only when it can never fit the pool. `schedule` may run again before `update_from_output`
    (pipelining): sequences still in flight are neither rescheduled nor preempted.
    """

    def __init__(self, config: SchedulerConfig, pool: BlockPool) -> None:
        if pool.block_size != config.block_size:
            raise ValueError(f"block_size {config.block_size} != pool block_size {pool.block_size}")
        self.config = config
        self.pool = pool
        self.kv = KVCacheManager(pool)
        self.policy = POLICIES[config.policy]()
        self.requests: dict[str, Sequence] = {}
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self._in_flight: set[str] = set()
        self._unannounced: set[str] = set()  # forked children the worker has not seen yet
        self._finished_ids: list[str] = []
        self._block_copies: list[BlockCopy] = []

    @property
    def num_waiting(self) -> int:
        return len(self.policy)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def add(self, seq: Sequence) -> None:
        """Queue a fresh sequence; one that can never fit is finished at once with an error."""
        if seq.request_id in self.requests:
            raise ValueError(f"duplicate request_id {seq.request_id!r}")
        if seq.status is not SequenceStatus.WAITING or seq.block_table:
            raise ValueError(f"{seq.request_id!r} is not a fresh sequence")
        self.requests[seq.request_id] = seq
        self.policy.push(seq)
        error = self._unfittable_reason(seq)
        if error is not None:
            self._finish(seq, SequenceStatus.FINISHED_ERROR, error)

    def schedule(self) -> SchedulerOutput:
        """Pick this step's `{request_id: num_tokens}`, allocating or preempting as needed."""
        out = SchedulerOutput(finished_ids=self._finished_ids, block_copies=self._block_copies)
        self._finished_ids, self._block_copies = [], []
        step: dict[str, int] = {}
        budget = self._schedule_running(step, out)
        # NOTE(helix): admitting while preempting would just thrash; wait for the next step.
        if not out.preempted_ids:
            self._schedule_waiting(step, budget, out)
        out.scheduled = [(self.requests[request_id], num) for request_id, num in step.items()]
        self._in_flight.update(step)
        return out

    def update_from_output(
        self, output: SchedulerOutput, sampled_token_ids: dict[str, list[int]]
    ) -> list[Sequence]:
        """Advance computed counts for a finished step and append sampled tokens.

        Returns the sequences that got new tokens. Samples for a partial prefill are dropped.
        """
        updated: list[Sequence] = []
        for seq, num_tokens in output.scheduled:
            self._in_flight.discard(seq.request_id)
            if self.requests.get(seq.request_id) is not seq:
                continue  # finished or aborted while in flight
            self.kv.commit_computed(seq, num_tokens)
            tokens = sampled_token_ids.get(seq.request_id)
            if tokens and seq.num_uncomputed_tokens == 0:
                seq.append_tokens(tokens)
                updated.append(seq)
        return updated

    def finish(self, request_id: str, reason: SequenceStatus) -> None:
        """End a request with a FINISHED_* status and free its blocks."""
        if not reason.is_finished:
            raise ValueError(f"reason must be a FINISHED_* status, got {reason.name}")
        if request_id not in self.requests:
            raise KeyError(f"unknown request {request_id!r}")
        self._finish(self.requests[request_id], reason)

    def abort(self, request_id: str) -> bool:
        """Finish a request as aborted; False if it is unknown or already finished."""
        if request_id not in self.requests:
            return False
        self._finish(self.requests[request_id], SequenceStatus.FINISHED_ABORTED)
        return True

    def fork(self, parent_id: str, child: Sequence) -> None:
        """Add `child`, sharing the computed KV of running, idle `parent_id` (n > 1 sampling).

        Falls back to queueing the child (recompute, mostly prefix hits) when no block is free.
        """
        parent = self.requests[parent_id]
        if parent.status is not SequenceStatus.RUNNING or parent_id in self._in_flight:
            raise ValueError(f"parent {parent_id!r} must be running and not in flight")
        self.add(child)
        if child.is_finished or len(self.running) >= self.config.max_num_seqs:
            return
        try:
            copies = self.kv.fork(parent, child)
        except ValueError:  # undo `add`: a rejected fork leaves no trace
            self.policy.remove(child)
            del self.requests[child.request_id]
            raise
        if copies is None:
            return
        self.policy.remove(child)
        child.status = SequenceStatus.RUNNING
        self.running.append(child)
        self._unannounced.add(child.request_id)
        self._block_copies.extend(copies)

    def check_integrity(self) -> None:
        """Pool invariants plus: ref counts equal block-table references; no request is lost."""
        self.pool.check_integrity()
        refs = Counter(block_id for seq in self.requests.values() for block_id in seq.block_table)
        for block in self.pool.blocks:
            if block.ref_cnt != refs[block.block_id]:
                raise RuntimeError(f"{block!r} has {refs[block.block_id]} block-table references")
        queued = [*self.running, *self.policy]
        if {seq.request_id for seq in queued} != set(self.requests) or len(queued) != len(
            self.requests
        ):
            raise RuntimeError("running + waiting do not partition the live requests")
        if any(seq.status is not SequenceStatus.RUNNING for seq in self.running):
            raise RuntimeError("a sequence in `running` is not RUNNING")
        if any(seq.block_table or seq.status is SequenceStatus.RUNNING for seq in self.policy):
            raise RuntimeError("a waiting sequence holds blocks or is RUNNING")

    def _schedule_running(self, step: dict[str, int], out: SchedulerOutput) -> int:
        budget = self.config.max_num_batched_tokens
        for seq in list(self.running):
            if budget <= 0:
                break
            if seq.status is not SequenceStatus.RUNNING or seq.request_id in self._in_flight:
                continue  # preempted earlier in this loop, or still in flight
            num_new = self._num_new_tokens(seq, seq.num_uncomputed_tokens, budget)
            if num_new == 0:
                continue
            num_blocks = self.kv.num_required_blocks(seq.num_computed_tokens + num_new)
            if num_blocks > self.pool.num_blocks:
                self._finish(seq, SequenceStatus.FINISHED_ERROR, "sequence outgrew the KV pool")
                continue
            new_blocks = self.kv.allocate_slots(seq, num_new)
            while new_blocks is None:
                victim = self._preempt_one(out)
                budget += step.pop(victim.request_id, 0)
                if victim is seq:
                    break
                new_blocks = self.kv.allocate_slots(seq, num_new)
            if new_blocks is None:
                continue
            step[seq.request_id] = num_new
            budget -= num_new
            if seq.request_id in self._unannounced:
                self._unannounced.discard(seq.request_id)
                out.new_request_ids.append(seq.request_id)
                new_blocks = list(seq.block_table)
            if new_blocks:
                out.new_block_ids[seq.request_id] = new_blocks
        return budget

    def _schedule_waiting(self, step: dict[str, int], budget: int, out: SchedulerOutput) -> None:
        while self.policy and len(self.running) < self.config.max_num_seqs and budget > 0:
            seq = self.policy.peek()
            hits, num_hit_tokens = self.kv.get_computed_blocks(seq)
            num_new = self._num_new_tokens(seq, seq.num_tokens - num_hit_tokens, budget)
            # NOTE(helix): a preempted sequence may chunk its recompute even with chunking off;
            # its prompt plus outputs can exceed any one step's budget.
            is_whole = num_new == seq.num_tokens - num_hit_tokens
            if not (is_whole or self.config.enable_chunked_prefill or seq.num_preemptions):
                break
            new_blocks = self.kv.allocate_slots(seq, num_new, hits)
            if new_blocks is None:
                break
            self.policy.pop()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            step[seq.request_id] = num_new
            budget -= num_new
            out.new_request_ids.append(seq.request_id)
            out.new_block_ids[seq.request_id] = list(seq.block_table)

    def _num_new_tokens(self, seq: Sequence, num_uncomputed: int, budget: int) -> int:
        threshold = self.config.long_prefill_token_threshold
        return min(num_uncomputed, budget, threshold if threshold > 0 else num_uncomputed)

    def _preempt_one(self, out: SchedulerOutput) -> Sequence:
        candidates = [seq for seq in self.running if seq.request_id not in self._in_flight]
        victim = self.policy.pick_victim(candidates)
        self.running.remove(victim)
        self.kv.free(victim)
        victim.status = SequenceStatus.PREEMPTED
        victim.num_preemptions += 1
        self.num_preemptions += 1
        self.policy.push_front(victim)
        self._unannounced.discard(victim.request_id)
        out.preempted_ids.append(victim.request_id)
        out.new_block_ids.pop(victim.request_id, None)
        if victim.request_id in out.new_request_ids:
            out.new_request_ids.remove(victim.request_id)
        return victim

    def _finish(self, seq: Sequence, status: SequenceStatus, error: str | None = None) -> None:
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        else:
            self.policy.remove(seq)
        self.kv.free(seq)
        seq.status = status
        seq.error_message = error
        del self.requests[seq.request_id]
        self._in_flight.discard(seq.request_id)
        self._unannounced.discard(seq.request_id)
        self._finished_ids.append(seq.request_id)

    def _unfittable_reason(self, seq: Sequence) -> str | None:
        # The last output token is sampled but never fed back, so it needs no KV slot.
        max_num_tokens = seq.num_prompt_tokens + seq.max_tokens - 1
        num_blocks = self.kv.num_required_blocks(max_num_tokens)
        if num_blocks > self.pool.num_blocks:
            return (
                f"needs {num_blocks} KV blocks for {max_num_tokens} tokens but the pool holds "
                f"{self.pool.num_blocks}"
            )
        budget = self.config.max_num_batched_tokens
        if not self.config.enable_chunked_prefill and seq.num_prompt_tokens > budget:
            return f"prompt of {seq.num_prompt_tokens} tokens exceeds a step's {budget} tokens"
        return None
