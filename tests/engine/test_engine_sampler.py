"""Sampler and SamplingParams: greedy, filters, per-request seeds, logprobs, validation."""

from __future__ import annotations

import pytest
import torch

from helix.runtime.sampler import prepare, sample
from helix.runtime.sampling_params import SamplingParams


def gen(seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator().manual_seed(seed)


def draw(logits: torch.Tensor, params: list[SamplingParams], seeds: list[int | None]) -> list[int]:
    return sample(logits, prepare(params, [gen(s) for s in seeds])).token_ids


def test_greedy_is_argmax() -> None:
    logits = torch.randn(5, 50)
    params = [SamplingParams(temperature=0)] * 5
    assert draw(logits, params, [None] * 5) == logits.argmax(-1).tolist()


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1.0, top_k=1),
    SamplingParams(temperature=1.0, top_p=1e-6),
    SamplingParams(temperature=1.0, min_p=1.0),
])
def test_filters_that_keep_one_token_are_greedy(params: SamplingParams) -> None:
    logits = torch.randn(8, 30)
    assert draw(logits, [params] * 8, [None] * 8) == logits.argmax(-1).tolist()


def test_top_k_never_leaves_the_top_k() -> None:
    logits = torch.randn(1, 20)
    allowed = set(logits[0].topk(3).indices.tolist())
    params = SamplingParams(temperature=2.0, top_k=3)
    for seed in range(200):
        assert draw(logits, [params], [seed])[0] in allowed


def test_frequencies_follow_the_distribution() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()[None, :].repeat(4000, 1)
    params = [SamplingParams(temperature=1.0)] * 4000
    generator = torch.Generator().manual_seed(0)
    tokens = sample(logits, prepare(params, [generator] * 4000)).token_ids
    freq = torch.bincount(torch.tensor(tokens), minlength=4).float() / 4000
    assert torch.allclose(freq, probs, atol=0.03)


def test_seeded_request_is_reproducible_whatever_its_batch() -> None:
    torch.manual_seed(1)
    row = torch.randn(1, 40)
    params = SamplingParams(temperature=0.9, top_p=0.9, seed=7)
    alone = draw(row, [params], [7])
    other = SamplingParams(temperature=1.0)
    batch = torch.cat([torch.randn(2, 40), row, torch.randn(1, 40)])
    mixed = draw(batch, [other, other, params, other], [None, None, 7, None])
    assert mixed[2] == alone[0]


def test_logprobs_are_log_softmax_of_the_logits() -> None:
    logits = torch.randn(3, 25)
    params = [SamplingParams(temperature=0, logprobs=4)] * 3
    result = sample(logits, prepare(params, [None] * 3))
    expected = torch.log_softmax(logits, -1)
    assert result.logprobs is not None and result.top_logprobs is not None
    for row in range(3):
        token = result.token_ids[row]
        assert result.logprobs[row] == pytest.approx(expected[row, token].item(), abs=1e-6)
        top = result.top_logprobs[row]
        assert [t for t, _ in top] == expected[row].topk(4).indices.tolist()


@pytest.mark.parametrize("kwargs,field", [
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"max_tokens": 0}, "max_tokens"),
    ({"temperature": -1}, "temperature"), ({"n": 0}, "n"), ({"min_p": 2}, "min_p"),
    ({"top_k": -5}, "top_k"), ({"logprobs": 99}, "logprobs"), ({"stop": [""]}, "stop"),
])
def test_bad_params_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field} "):
        SamplingParams(**kwargs)
