"""Token sampling on the last pipeline stage: `prepare` the batch's parameters as tensors once per
step, then `sample` logits -> token ids (+ logprobs)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from .sampling_params import SamplingParams


@dataclass
class SamplingBatch:
    params: list[SamplingParams]
    generators: list[torch.Generator | None]  # per row; None = the shared stream
    num_logprobs: int  # the most top logprobs any row asked for (-1: none asked)
    all_greedy: bool
    needs_filter: bool

    # NOTE(engine): the per-row tensors are built on first use; an all-greedy step (the
    # common temperature-0 case) needs none of them.
    @cached_property
    def temperature(self) -> torch.Tensor:  # [N] float32; 0 rows are greedy
        return torch.tensor([p.temperature for p in self.params], dtype=torch.float32)

    @cached_property
    def top_p(self) -> torch.Tensor:  # [N] float32
        return torch.tensor([p.top_p for p in self.params], dtype=torch.float32)

    @cached_property
    def top_k(self) -> torch.Tensor:  # [N] int64; 0 = off
        return torch.tensor([max(p.top_k, 0) for p in self.params], dtype=torch.int64)

    @cached_property
    def min_p(self) -> torch.Tensor:  # [N] float32
        return torch.tensor([p.min_p for p in self.params], dtype=torch.float32)


@dataclass
class SampleResult:
    token_ids: list[int]
    logprobs: list[float] | None  # log-probability of each sampled token
    top_logprobs: list[list[tuple[int, float]]] | None  # per row: (token, logprob), best first


def prepare(
    params: list[SamplingParams], generators: list[torch.Generator | None]
) -> SamplingBatch:
    asked = [p.logprobs for p in params if p.logprobs is not None]
    return SamplingBatch(
        list(params),
        generators,
        max(asked) if asked else -1,
        all_greedy=all(p.is_greedy for p in params),
        needs_filter=any(p.top_k > 0 or p.top_p < 1 or p.min_p > 0 for p in params),
    )


def sample(logits: torch.Tensor, batch: SamplingBatch) -> SampleResult:
    """logits [N, V] (any float dtype) -> one token per row."""
    logits = logits.float()
    token_ids = logits.argmax(dim=-1) if batch.all_greedy else _sample_random(logits, batch)
    if batch.num_logprobs < 0:
        return SampleResult(token_ids.tolist(), None, None)
    logprobs = torch.log_softmax(logits, dim=-1)  # [N, V], raw (before temperature), like vLLM
    chosen = logprobs.gather(1, token_ids[:, None])[:, 0]
    top: list[list[tuple[int, float]]] = [[] for _ in range(logits.shape[0])]
    if batch.num_logprobs > 0:
        values, indices = logprobs.topk(batch.num_logprobs, dim=-1)
        top = [list(zip(i.tolist(), v.tolist())) for i, v in zip(indices, values)]
    return SampleResult(token_ids.tolist(), chosen.tolist(), top)


def _sample_random(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    greedy = batch.temperature == 0
    temperature = torch.where(greedy, torch.ones_like(batch.temperature), batch.temperature)
    scaled = logits / temperature[:, None]
    if batch.needs_filter:
        scaled = _filter(scaled, batch)
    probs = torch.softmax(scaled, dim=-1)  # [N, V]
    # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p; each row's noise comes from
    # its own generator, so a seeded request samples the same tokens whatever its batch.
    noise = torch.empty_like(probs)
    for row, generator in enumerate(batch.generators):
        noise[row].exponential_(generator=generator)
    token_ids = (probs / noise).argmax(dim=-1)
    return torch.where(greedy, logits.argmax(dim=-1), token_ids)


def _filter(scaled: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Mask tokens outside top-k, top-p and min-p with -inf."""
    vocab = scaled.shape[-1]
    sorted_logits, order = scaled.sort(dim=-1, descending=True)  # [N, V]
    keep = torch.ones_like(sorted_logits, dtype=torch.bool)
    k = torch.where(
        batch.top_k > 0, batch.top_k.clamp(max=vocab), torch.full_like(batch.top_k, vocab)
    )
    ranks = torch.arange(vocab)[None, :]
    keep &= ranks < k[:, None]
    probs = torch.softmax(sorted_logits, dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass strictly above each token
    keep &= before < batch.top_p[:, None]
    keep &= probs >= batch.min_p[:, None] * probs[:, :1]
    keep[:, 0] = True  # the most likely token always survives
    masked = sorted_logits.masked_fill(~keep, float("-inf"))
    return torch.empty_like(scaled).scatter_(1, order, masked)
