"""LLMEngine: one node's loop. step() = schedule -> run -> sample -> update -> check stops.

The scheduler and KV bookkeeping are torch-free; this module joins them to the model runner,
the sampler and the detokenizer.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .engine_config import EngineConfig
from .node_load import Edge, NodeLoad, TokenRate, route_edges
from .outputs import CompletionOutput, RequestOutput
from .sampler import prepare, sample
from .sampling_params import SamplingParams
from .sequence import Sequence, SequenceStatus

_FINISH = {
    SequenceStatus.FINISHED_STOPPED: "stop",
    SequenceStatus.FINISHED_LENGTH: "length",
    SequenceStatus.FINISHED_ABORTED: "abort",
    SequenceStatus.FINISHED_ERROR: "error",
}


def _salt(value: object) -> str | None:
    return None if value is None else str(value)


def prepare_prompt(
    tokenizer: Any, prompt: Any, max_model_len: int, vocab_size: int
) -> tuple[str | None, list[int]]:
    """A str, token-id list or {"prompt" | "prompt_token_ids"} dict -> (text, ids), validated."""
    text: str | None
    if isinstance(prompt, str):
        text, ids = prompt, tokenizer.encode(prompt)
    elif isinstance(prompt, dict) and "prompt_token_ids" in prompt:
        text, ids = None, prompt["prompt_token_ids"]
        if isinstance(prompt.get("prompt"), str):
            text = prompt["prompt"]
        if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
            raise ValueError("prompt_token_ids must be a list of ints")
    elif isinstance(prompt, dict) and isinstance(prompt.get("prompt"), str):
        text, ids = prompt["prompt"], tokenizer.encode(prompt["prompt"])
    elif isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        text, ids = None, prompt
    else:
        raise ValueError(
            "a prompt must be a str, a list of token ids or {'prompt_token_ids': "
            f"[...]}}, got {type(prompt).__name__}"
        )
    if not ids:
        raise ValueError("prompt is empty")
    if len(ids) >= max_model_len:
        raise ValueError(
            f"prompt has {len(ids)} tokens; max_model_len is {max_model_len} "
            "(room for at least one new token is needed)"
        )
    if any(not 0 <= t < vocab_size for t in ids):
        raise ValueError(f"prompt_token_ids must lie in [0, {vocab_size})")
    return text, list(ids)


def apply_token(
    out: CompletionOutput,
    detokenizer: Any,
    token: int,
    params: SamplingParams,
    eos_token_ids: tuple[int, ...],
    max_tokens: int,
    at_max_model_len: bool,
) -> SequenceStatus | None:
    """Append a sampled token to a completion; the FINISHED_* status if it ends it, else None."""
    out.token_ids.append(token)
    out.text += detokenizer.push(token)
    if token in eos_token_ids and not params.ignore_eos:
        out.text += detokenizer.flush()
        return SequenceStatus.FINISHED_STOPPED
    if token in params.stop_token_ids:
        out.stop_reason = token
        return SequenceStatus.FINISHED_STOPPED
    for stop in params.stop:
        at = out.text.find(stop)
        if at >= 0:
            out.text, out.stop_reason = out.text[:at], stop
            return SequenceStatus.FINISHED_STOPPED
    if len(out.token_ids) >= max_tokens or at_max_model_len:
        out.text += detokenizer.flush()
        return SequenceStatus.FINISHED_LENGTH
    return None


@dataclass
class _Sample:
    """One of a request's n completions: its sequence and its output-side state."""

    seq: Sequence
    output: CompletionOutput
    detokenizer: object
    generator: torch.Generator | None


@dataclass
class _Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    samples: list[_Sample] = field(default_factory=list)
    pending: list[_Sample] = field(default_factory=list)
    """Samples 1..n-1 wait until sample 0's prompt is computed, then share its cached blocks."""
    arrival: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> bool:
        return not self.pending and all(s.output.finished for s in self.samples)


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        from .engine_setup import build_node

        self.config = config
        node = build_node(config)
        self.model_config = node.model_config
        self.tokenizer = node.tokenizer
        self.scheduler = node.scheduler
        self.runner = node.runner
        self.max_model_len = node.max_model_len
        self._requests: dict[str, _Request] = {}
        self._by_seq: dict[str, tuple[_Request, _Sample]] = {}
        self._ids = itertools.count()
        self._rate = TokenRate()
        self._routed: dict[Edge, int] = {}
        torch.manual_seed(config.seed)

    # ---- requests -------------------------------------------------------------------------
    def add_request(
        self,
        prompt: str | list[int] | dict[str, object],
        params: SamplingParams,
        request_id: str | None = None,
    ) -> str:
        """Validate and queue one prompt; raises ValueError naming the problem."""
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self._requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        text, token_ids = prepare_prompt(
            self.tokenizer, prompt, self.max_model_len, self.model_config.vocab_size
        )
        max_tokens = min(params.max_tokens, self.max_model_len - len(token_ids))
        request = _Request(request_id, text, token_ids, params)
        for index in range(params.n):
            seed = None if params.seed is None else params.seed + index
            seq = Sequence(
                request_id=f"{request_id}#{index}",
                prompt_token_ids=list(token_ids),
                max_tokens=max_tokens,
                priority=int(str(params.extra.get("priority", 0))),
                cache_salt=_salt(params.extra.get("cache_salt")),
                params=params,
            )
            sample_state = _Sample(
                seq,
                CompletionOutput(index, logprobs=[] if params.logprobs is not None else None),
                self.tokenizer.detokenizer(token_ids, params.skip_special_tokens),
                None if seed is None else torch.Generator().manual_seed(seed),
            )
            request.samples.append(sample_state)
            self._by_seq[seq.request_id] = (request, sample_state)
        request.pending = request.samples[1:]
        self._requests[request_id] = request
        self.scheduler.add(request.samples[0].seq)
        self._collect_errors(request)
        self._count_edge(route_edges(["node0"])[0])
        return request_id

    def _count_edge(self, edge: Edge) -> None:
        self._routed[edge] = self._routed.get(edge, 0) + 1

    def abort_request(self, request_id: str) -> None:
        request = self._requests.get(request_id)
        if request is None:
            return
        for s in request.samples:
            if not s.output.finished:
                if s in request.pending:
                    s.output.finish_reason = "abort"
                else:
                    self.scheduler.abort(s.seq.request_id)
                    s.output.finish_reason = "abort"
        request.pending = []

    def has_unfinished_requests(self) -> bool:
        return any(not r.finished for r in self._requests.values())

    def load_stats(self) -> dict[str, float]:
        """Queue and KV figures for metrics (the cluster engine offers the same keys)."""
        scheduler = self.scheduler
        return {
            "num_requests_running": len(scheduler.running),
            "num_requests_waiting": scheduler.num_waiting,
            "kv_cache_usage": float(scheduler.pool.usage),
            "num_preemptions": scheduler.num_preemptions,
        }

    def node_loads(self) -> list[NodeLoad]:
        """This engine as the one node of its route (the cluster engine lists every node)."""
        device = getattr(self.runner, "device", None)
        kind = "cpu"
        if getattr(device, "type", "cpu") == "cuda":
            kind = str(torch.cuda.get_device_name(device))
        layers = (0, int(self.model_config.num_layers))
        usage = float(self.scheduler.pool.usage)
        return [NodeLoad("node0", kind, layers, usage, self._rate.per_second())]

    def routed_counts(self) -> dict[Edge, int]:
        """Requests that crossed each edge: into the node when added, out when finished."""
        return dict(self._routed)

    def planned_flows(self) -> dict[Edge, float]:
        return {}

    # ---- the loop -------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """One scheduler step; returns the requests that changed (finished ones last time)."""
        out = self.scheduler.schedule()
        logits, sampled = self.runner.execute(out)
        self._rate.add(out.total_num_scheduled_tokens)
        tokens: dict[str, list[int]] = {}
        changed: set[str] = set()
        if logits is not None:
            states = [self._by_seq[seq.request_id][1] for seq in sampled]
            batch = prepare(
                [s.seq.params for s in states],  # type: ignore[misc]
                [s.generator for s in states],
            )
            result = sample(logits, batch)
            for row, (seq, token) in enumerate(zip(sampled, result.token_ids)):
                tokens[seq.request_id] = [token]
                if result.logprobs is not None:
                    self._record_logprobs(states[row], token, result, row)
        for seq in self.scheduler.update_from_output(out, tokens):
            request, state = self._by_seq[seq.request_id]
            self._on_token(request, state, seq.output_token_ids[-1])
            changed.add(request.request_id)
        for request_id in out.finished_ids:  # errors decided by the scheduler
            if request_id in self._by_seq:
                request, state = self._by_seq[request_id]
                self._close(state, state.seq.status)
                changed.add(request.request_id)
        self._release_pending()
        return [self._snapshot(self._requests[r]) for r in sorted(changed) if r in self._requests]

    def pop_finished(self) -> list[RequestOutput]:
        done = [r for r in self._requests.values() if r.finished]
        for request in done:
            del self._requests[request.request_id]
            self._count_edge(route_edges(["node0"])[-1])
            for s in request.samples:
                self._by_seq.pop(s.seq.request_id, None)
        return [self._snapshot(r) for r in done]

    # ---- helpers --------------------------------------------------------------------------
    def _record_logprobs(self, state: _Sample, token: int, result: object, row: int) -> None:
        logprob = result.logprobs[row]  # type: ignore[attr-defined]
        entry = {token: logprob}
        num_top = getattr(state.seq.params, "logprobs", None) or 0
        for alt, value in result.top_logprobs[row][:num_top]:  # type: ignore[attr-defined]
            entry.setdefault(alt, value)
        assert state.output.logprobs is not None
        state.output.logprobs.append(entry)
        state.output.cumulative_logprob = (state.output.cumulative_logprob or 0.0) + logprob

    def _on_token(self, request: _Request, state: _Sample, token: int) -> None:
        status = apply_token(
            state.output,
            state.detokenizer,
            token,
            request.params,
            self.model_config.eos_token_ids,
            state.seq.max_tokens,
            state.seq.num_tokens >= self.max_model_len,
        )
        if status is not None:
            self._finish(state, status)

    def _finish(self, state: _Sample, status: SequenceStatus) -> None:
        self.scheduler.finish(state.seq.request_id, status)
        self._close(state, status)

    def _close(self, state: _Sample, status: SequenceStatus) -> None:
        state.output.finish_reason = _FINISH.get(status, "stop")

    def _collect_errors(self, request: _Request) -> None:
        """A request the scheduler can never fit is dropped here and reported as a ValueError."""
        first = request.samples[0]
        if first.seq.status is SequenceStatus.FINISHED_ERROR:
            del self._requests[request.request_id]
            for s in request.samples:
                self._by_seq.pop(s.seq.request_id, None)
            raise ValueError(first.seq.error_message or "request cannot be served")

    def _release_pending(self) -> None:
        for request in self._requests.values():
            if not request.pending:
                continue
            first = request.samples[0].seq
            if first.is_finished or first.num_computed_tokens >= first.num_prompt_tokens:
                for s in request.pending:
                    self.scheduler.add(s.seq)
                request.pending = []

    def _snapshot(self, request: _Request) -> RequestOutput:
        first = request.samples[0].seq
        error = next((s.seq.error_message for s in request.samples if s.seq.error_message), None)
        return RequestOutput(
            request.request_id,
            request.prompt,
            request.prompt_token_ids,
            [s.output for s in request.samples],
            request.finished,
            error,
            first.num_cached_tokens,
        )
