"""Synthetic datasets of `helix bench`: lengths, determinism by seed, shared prefixes."""

from __future__ import annotations

import statistics
from collections import defaultdict

import pytest

from helix.bench import (
    SampleRequest,
    make_dataset,
    random_dataset,
    shared_prefix_dataset,
    sharegpt_dataset,
)


def _num_words(request: SampleRequest) -> int:
    return len(request.as_prompt().split())


def test_random_lengths_and_fixed_prefix() -> None:
    requests = random_dataset(20, input_len=32, output_len=7, prefix_len=10, seed=0)
    assert len(requests) == 20
    assert all(r.prompt_len == 42 and _num_words(r) == 42 for r in requests)
    assert all(r.output_len == 7 for r in requests)
    prefixes = {" ".join(r.as_prompt().split()[:10]) for r in requests}
    assert len(prefixes) == 1  # vLLM's random prefix is the same for every prompt
    assert len({r.as_prompt() for r in requests}) == 20


def test_random_range_ratio_bounds() -> None:
    requests = random_dataset(200, input_len=100, output_len=50, range_ratio=0.5, seed=1)
    inputs = [r.prompt_len for r in requests]
    outputs = [r.output_len for r in requests]
    assert 50 <= min(inputs) < max(inputs) <= 150
    assert 25 <= min(outputs) < max(outputs) <= 75
    assert all(_num_words(r) == r.prompt_len for r in requests)


@pytest.mark.parametrize("name", ["random", "sharegpt", "shared-prefix"])
def test_datasets_are_deterministic_by_seed(name: str) -> None:
    kwargs = {"input_len": 16, "output_len": 8, "shared_prefix_len": 32, "num_groups": 3}
    first = make_dataset(name, 30, seed=5, **kwargs)
    assert first == make_dataset(name, 30, seed=5, **kwargs)
    assert first != make_dataset(name, 30, seed=6, **kwargs)


def test_sharegpt_lengths_are_long_tailed_and_clipped() -> None:
    requests = sharegpt_dataset(4000, seed=0)
    inputs = [r.prompt_len for r in requests]
    outputs = [r.output_len for r in requests]
    assert min(inputs) >= 4 and max(inputs) <= 1024
    assert min(outputs) >= 4
    assert all(r.prompt_len + r.output_len <= 2048 for r in requests)
    assert 130 < statistics.mean(inputs) < 190  # ShareGPT: mean 161 prompt tokens
    assert 280 < statistics.mean(outputs) < 380  # ShareGPT: mean 338 output tokens
    assert statistics.median(inputs) < statistics.mean(inputs)  # right-skewed
    assert all(_num_words(r) == r.prompt_len for r in requests)


def test_sharegpt_turns_alternate_and_end_with_user() -> None:
    requests = sharegpt_dataset(200, seed=2)
    assert {len(r.turns) for r in requests} == {1, 3, 5}
    for request in requests:
        roles = [m["role"] for m in request.as_messages()]
        assert roles[0] == "user" and roles[-1] == "user"
        assert all(a != b for a, b in zip(roles, roles[1:]))


def test_shared_prefix_groups_really_share_the_system_prompt() -> None:
    requests = shared_prefix_dataset(
        24, num_groups=4, prefix_len=64, question_len=8, output_len=5, seed=0
    )
    groups: dict[str, list[SampleRequest]] = defaultdict(list)
    for request in requests:
        groups[request.system].append(request)
    assert len(groups) == 4
    assert sorted(len(members) for members in groups.values()) == [6, 6, 6, 6]
    assert all(len(system.split()) == 64 for system in groups)
    for system, members in groups.items():
        assert all(m.as_prompt().startswith(system) for m in members)
        assert all(m.as_messages()[0] == {"role": "system", "content": system} for m in members)
        assert len({m.turns for m in members}) == len(members)  # questions differ
    assert all(r.prompt_len == 72 and r.output_len == 5 for r in requests)
    order = [list(groups).index(r.system) for r in requests]
    assert order != sorted(order)  # groups interleave


def test_bad_dataset_arguments() -> None:
    with pytest.raises(ValueError, match="dataset"):
        make_dataset("sonnet", 4)
    with pytest.raises(ValueError, match="num_prompts"):
        random_dataset(0, 8, 8)
    with pytest.raises(ValueError, match="range_ratio"):
        random_dataset(2, 8, 8, range_ratio=1.0)
