"""Pure half of `helix bench` (shaped like `vllm bench serve`): datasets and statistics.

In -> Out: dataset name + lengths -> `SampleRequest`s (seeded, no downloads); the streamed
requests (helix/bench_cli.py) -> `RequestResult`s -> `summarize` -> `BenchSummary` (vLLM names).

Lengths are counted in words drawn from a vocabulary of short common English words, each of which
is a single token in the usual BPE vocabularies, so word counts approximate prompt token counts.
Output lengths are exact on a server that honours `ignore_eos` and `max_tokens`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

_VOCAB_TEXT = (
    "the of and to in is it you that he was for on are with as his they at be this have from or "
    "one had by word but not what all were we when your can said there use an each which she do "
    "how their if will up other about out many then them these so some her would make like him "
    "into time has look two more write go see number no way could people my than first water been "
    "call who oil its now find long down day did get come made may part"
)
_VOCAB = tuple(_VOCAB_TEXT.split())


@dataclass(frozen=True)
class SampleRequest:
    """One benchmark request: a conversation and how many tokens to generate for it."""

    turns: tuple[str, ...]
    """Conversation turns, alternating user / assistant, always ending with a user turn."""
    prompt_len: int
    """Words in `system` plus `turns` (approximately prompt tokens)."""
    output_len: int
    """Tokens to generate: sent as `max_tokens` together with `ignore_eos`."""
    system: str = ""
    """A system prompt; the shared-prefix dataset shares it within a group."""

    def as_prompt(self) -> str:
        """The text sent to /v1/completions: system prompt and turns joined by blank lines."""
        return "\n\n".join(part for part in (self.system, *self.turns) if part)

    def as_messages(self) -> list[dict[str, str]]:
        """The messages sent to /v1/chat/completions."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for i, turn in enumerate(self.turns):
            messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": turn})
        return messages


def _words(rng: random.Random, num_words: int) -> str:
    return " ".join(rng.choices(_VOCAB, k=num_words))


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def random_dataset(
    num_prompts: int,
    input_len: int,
    output_len: int,
    prefix_len: int = 0,
    range_ratio: float = 0.0,
    seed: int = 0,
) -> list[SampleRequest]:
    """vLLM's `random` dataset: one fixed random prefix of `prefix_len` words prepended to every
    prompt, then `input_len` random words; lengths are drawn uniformly from
    [len * (1 - range_ratio), len * (1 + range_ratio)]."""
    _check_positive(num_prompts=num_prompts, input_len=input_len, output_len=output_len)
    if prefix_len < 0:
        raise ValueError(f"prefix_len must be >= 0, got {prefix_len}")
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError(f"range_ratio must be in [0, 1), got {range_ratio}")
    rng = random.Random(seed)
    prefix = _words(rng, prefix_len)

    def draw(length: int) -> int:
        low = max(1, math.floor(length * (1.0 - range_ratio)))
        return rng.randint(low, max(low, math.ceil(length * (1.0 + range_ratio))))

    requests = []
    for _ in range(num_prompts):
        num_input, num_output = draw(input_len), draw(output_len)
        text = " ".join(part for part in (prefix, _words(rng, num_input)) if part)
        requests.append(SampleRequest((text,), prefix_len + num_input, num_output))
    return requests


@dataclass(frozen=True)
class ShareGptShape:
    """Lognormal length model standing in for ShareGPT (no download).

    NOTE(bench): the means match the ShareGPT statistics reported in the vLLM paper (SOSP'23,
    mean 161 input and 338 output tokens): exp(mu + sigma^2 / 2) = 161 and 338. Draws are then
    clipped the way vLLM filters ShareGPT: at least 4 tokens each, prompt <= 1024, and
    prompt + output <= 2048.
    """

    input_mu: float = 4.58
    """log-space mean of prompt length (median ~98 words)."""
    input_sigma: float = 1.0
    output_mu: float = 5.42
    """log-space mean of output length (median ~226 tokens)."""
    output_sigma: float = 0.9
    min_len: int = 4
    max_input_len: int = 1024
    max_total_len: int = 2048
    max_user_turns: int = 3
    """Conversations hold 1..max_user_turns user turns with assistant replies between them."""


def sharegpt_dataset(
    num_prompts: int, seed: int = 0, shape: ShareGptShape | None = None
) -> list[SampleRequest]:
    """Multi-turn-ish conversations with ShareGPT-like long-tailed prompt and output lengths."""
    _check_positive(num_prompts=num_prompts)
    shape = shape or ShareGptShape()
    rng = random.Random(seed)
    requests = []
    for _ in range(num_prompts):
        prompt_len = round(rng.lognormvariate(shape.input_mu, shape.input_sigma))
        prompt_len = min(max(prompt_len, shape.min_len), shape.max_input_len)
        output_len = round(rng.lognormvariate(shape.output_mu, shape.output_sigma))
        output_len = min(max(output_len, shape.min_len), shape.max_total_len - prompt_len)
        num_turns = min(2 * rng.randint(1, shape.max_user_turns) - 1, prompt_len)
        if num_turns % 2 == 0:
            num_turns -= 1
        cuts = [0, *sorted(rng.sample(range(1, prompt_len), num_turns - 1)), prompt_len]
        turns = tuple(_words(rng, end - start) for start, end in zip(cuts, cuts[1:]))
        requests.append(SampleRequest(turns, prompt_len, output_len))
    return requests


def shared_prefix_dataset(
    num_prompts: int,
    num_groups: int,
    prefix_len: int,
    question_len: int,
    output_len: int,
    seed: int = 0,
) -> list[SampleRequest]:
    """SGLang's generated-shared-prefix: `num_groups` long system prompts, each shared by the
    requests of its group (request i belongs to group i % num_groups), followed by a
    `question_len`-word question; the order is shuffled so groups interleave."""
    _check_positive(
        num_prompts=num_prompts,
        num_groups=num_groups,
        prefix_len=prefix_len,
        question_len=question_len,
        output_len=output_len,
    )
    rng = random.Random(seed)
    prefixes = [_words(rng, prefix_len) for _ in range(num_groups)]
    requests = [
        SampleRequest(
            (_words(rng, question_len),),
            prefix_len + question_len,
            output_len,
            system=prefixes[i % num_groups],
        )
        for i in range(num_prompts)
    ]
    rng.shuffle(requests)
    return requests


DATASETS = ("random", "sharegpt", "shared-prefix")


def make_dataset(
    name: str,
    num_prompts: int,
    *,
    input_len: int = 128,
    output_len: int = 64,
    prefix_len: int = 0,
    range_ratio: float = 0.0,
    num_groups: int = 8,
    shared_prefix_len: int = 512,
    seed: int = 0,
) -> list[SampleRequest]:
    """Build a dataset by name; `input_len`/`output_len` are the question/answer lengths for
    shared-prefix and are ignored by sharegpt."""
    if name == "random":
        return random_dataset(num_prompts, input_len, output_len, prefix_len, range_ratio, seed)
    if name == "sharegpt":
        return sharegpt_dataset(num_prompts, seed)
    if name == "shared-prefix":
        return shared_prefix_dataset(
            num_prompts, num_groups, shared_prefix_len, input_len, output_len, seed
        )
    raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {name!r}")


def dataset_stats(requests: Sequence[SampleRequest]) -> dict[str, float]:
    """Mean prompt and output lengths, for the report header."""
    n = max(len(requests), 1)
    return {
        "mean_prompt_len": sum(r.prompt_len for r in requests) / n,
        "mean_output_len": sum(r.output_len for r in requests) / n,
    }


# --- statistics (client side, vLLM definitions; see serving-facts section 10) ---------------

SLO_KEYS = ("ttft", "tpot", "e2el")


@dataclass
class RequestResult:
    """What the client saw of one streamed request; times are seconds from sending it."""

    prompt_len: int
    is_success: bool = False
    output_len: int = 0
    """`usage.completion_tokens` when the server reports it, else the count of text chunks."""
    ttft_s: float = 0.0
    latency_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    """Gaps between consecutive text chunks."""
    error: str = ""

    @property
    def tpot_s(self) -> float | None:
        """(E2EL - TTFT) / (output_len - 1); None for one-token outputs."""
        if self.output_len <= 1:
            return None
        return (self.latency_s - self.ttft_s) / (self.output_len - 1)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation, like numpy; 0.0 when empty."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class LatencyStats:
    mean_ms: float
    median_ms: float
    std_ms: float
    p90_ms: float
    p99_ms: float


def latency_stats(values_s: Sequence[float]) -> LatencyStats:
    """Mean, median, population std and p90/p99 in ms of latencies given in seconds."""
    ms = [v * 1000.0 for v in values_s]
    mean = sum(ms) / len(ms) if ms else 0.0
    std = math.sqrt(sum((v - mean) ** 2 for v in ms) / len(ms)) if ms else 0.0
    return LatencyStats(mean, percentile(ms, 50), std, percentile(ms, 90), percentile(ms, 99))


def parse_goodput(items: Sequence[str]) -> dict[str, float]:
    """`["ttft:500", "tpot:50"]` -> `{"ttft": 500.0, "tpot": 50.0}` (SLOs in ms)."""
    slos: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition(":")
        if not sep or key not in SLO_KEYS:
            raise ValueError(f"--goodput takes KEY:MS with KEY in {SLO_KEYS}, got {item!r}")
        try:
            slos[key] = float(value)
        except ValueError:
            raise ValueError(f"--goodput {key}: {value!r} is not a number of ms") from None
        if slos[key] <= 0:
            raise ValueError(f"--goodput {key} must be > 0 ms, got {value}")
    return slos


def meets_slos(result: RequestResult, slos_ms: dict[str, float]) -> bool:
    """vLLM's goodput test: a successful request meeting every given SLO. A one-token output has
    TPOT 0 here (it is excluded from the TPOT statistics, not from goodput)."""
    if not result.is_success:
        return False
    measured_ms = {
        "ttft": result.ttft_s * 1000.0,
        "tpot": (result.tpot_s or 0.0) * 1000.0,
        "e2el": result.latency_s * 1000.0,
    }
    return all(measured_ms[key] <= limit for key, limit in slos_ms.items())


def arrival_intervals(num_requests: int, request_rate: float, seed: int = 0) -> list[float]:
    """Gaps before each request: all zero for rate inf, else a Poisson process (exponential
    gaps with mean 1 / rate). The first gap is drawn too, as in vLLM."""
    if not request_rate > 0:
        raise ValueError(f"request rate must be > 0 (or inf), got {request_rate}")
    if math.isinf(request_rate):
        return [0.0] * num_requests
    rng = random.Random(seed)
    return [rng.expovariate(request_rate) for _ in range(num_requests)]


@dataclass(frozen=True)
class BenchSummary:
    """The report: vLLM's field names; throughputs per second of wall time; latencies in ms."""

    completed: int
    failed: int
    duration_s: float
    total_input: int
    total_output: int
    request_throughput: float
    request_goodput: float | None
    output_throughput: float
    total_token_throughput: float
    ttft: LatencyStats
    tpot: LatencyStats
    itl: LatencyStats
    e2el: LatencyStats
    errors: dict[str, int]
    """Distinct error messages and how many requests failed with each."""
    goodput_slos_ms: dict[str, float]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def summarize(
    results: Sequence[RequestResult], duration_s: float, slos_ms: dict[str, float] | None = None
) -> BenchSummary:
    """Aggregate per-request results of one run lasting `duration_s` seconds."""
    ok = [r for r in results if r.is_success]
    errors: dict[str, int] = {}
    for r in results:
        if not r.is_success:
            errors[r.error or "unknown error"] = errors.get(r.error or "unknown error", 0) + 1
    total_input = sum(r.prompt_len for r in ok)
    total_output = sum(r.output_len for r in ok)
    per_s = 1.0 / duration_s if duration_s > 0 else 0.0
    goodput = None
    if slos_ms:
        goodput = sum(meets_slos(r, slos_ms) for r in ok) * per_s
    return BenchSummary(
        completed=len(ok),
        failed=len(results) - len(ok),
        duration_s=duration_s,
        total_input=total_input,
        total_output=total_output,
        request_throughput=len(ok) * per_s,
        request_goodput=goodput,
        output_throughput=total_output * per_s,
        total_token_throughput=(total_input + total_output) * per_s,
        ttft=latency_stats([r.ttft_s for r in ok]),
        tpot=latency_stats([t for r in ok if (t := r.tpot_s) is not None]),
        itl=latency_stats([gap for r in ok for gap in r.itl_s]),
        e2el=latency_stats([r.latency_s for r in ok]),
        errors=errors,
        goodput_slos_ms=dict(slos_ms or {}),
    )
