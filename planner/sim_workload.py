"""Simulated workload: request lengths and arrival processes, each drawn from its own seeded RNG.

Examples:

    lengths = LengthSpec()                       # lognormal-ish, mean 750 prompt / 240 output
    arrivals = PoissonArrivals(rate_per_s=2.0)   # or MmppArrivals((8.0, 1.0), (10.0, 30.0))
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass

LENGTH_KINDS = ("lognormal", "fixed")


@dataclass(frozen=True)
class LengthSpec:
    """How long prompts and outputs are."""

    kind: str = "lognormal"
    """`lognormal` (clamped to [1, max]) or `fixed` (always the means)."""
    prompt_mean_tokens: int = 750
    """Mean prompt length (the Helix paper's AVG_INPUT_LEN)."""
    output_mean_tokens: int = 240
    """Mean output length (AVG_OUTPUT_LEN); one decode step per output token."""
    sigma: float = 0.6
    """Log-space standard deviation of both lognormals."""
    max_prompt_tokens: int = 2048
    """Clamp for prompts (the paper filters traces to input <= 2048)."""
    max_output_tokens: int = 1024
    """Clamp for outputs (output <= 1024)."""

    def __post_init__(self) -> None:
        if self.kind not in LENGTH_KINDS:
            raise ValueError(
                f"lengths.kind must be one of {', '.join(LENGTH_KINDS)}, got {self.kind!r}"
            )
        for name in ("prompt_mean_tokens", "output_mean_tokens", "max_prompt_tokens",
                     "max_output_tokens"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"lengths.{name} must be >= 1, got {getattr(self, name)}")
        if self.sigma < 0:
            raise ValueError(f"lengths.sigma must be >= 0, got {self.sigma}")

    def sampler(self, seed: int) -> LengthSampler:
        return LengthSampler(self, random.Random(f"lengths-{seed}"))


class LengthSampler:
    """Draws (prompt_tokens, output_tokens); the mean before clamping is the spec's mean."""

    def __init__(self, spec: LengthSpec, rng: random.Random):
        self.spec, self._rng = spec, rng
        half_var = spec.sigma**2 / 2
        self._mu_prompt = math.log(spec.prompt_mean_tokens) - half_var
        self._mu_output = math.log(spec.output_mean_tokens) - half_var

    def draw(self) -> tuple[int, int]:
        s = self.spec
        if s.kind == "fixed":
            return s.prompt_mean_tokens, s.output_mean_tokens
        prompt = round(self._rng.lognormvariate(self._mu_prompt, s.sigma))
        output = round(self._rng.lognormvariate(self._mu_output, s.sigma))
        return min(max(prompt, 1), s.max_prompt_tokens), min(max(output, 1), s.max_output_tokens)


class Arrivals(ABC):
    """An online arrival process. `start(seed)` gives a fresh, seeded iterator of arrival times."""

    @abstractmethod
    def start(self, seed: int) -> ArrivalClock: ...

    @property
    @abstractmethod
    def mean_rate_per_s(self) -> float: ...


class ArrivalClock(ABC):
    @abstractmethod
    def next_after(self, now_s: float) -> float:
        """Time of the next arrival after the one at `now_s`."""


@dataclass(frozen=True)
class PoissonArrivals(Arrivals):
    rate_per_s: float
    """Mean requests per second."""

    def __post_init__(self) -> None:
        if not (self.rate_per_s > 0 and math.isfinite(self.rate_per_s)):
            raise ValueError(f"rate_per_s must be > 0, got {self.rate_per_s}")

    @property
    def mean_rate_per_s(self) -> float:
        return self.rate_per_s

    def start(self, seed: int) -> ArrivalClock:
        return _MmppClock((self.rate_per_s,), (math.inf,), random.Random(f"arrivals-{seed}"))


@dataclass(frozen=True)
class MmppArrivals(Arrivals):
    """Markov-modulated Poisson: state i emits at `rates_per_s[i]` for an exponential time of
    mean `mean_dwell_s[i]`, then moves to state i+1 (cyclically). Two states make bursts."""

    rates_per_s: tuple[float, ...]
    mean_dwell_s: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.rates_per_s) < 1 or len(self.rates_per_s) != len(self.mean_dwell_s):
            raise ValueError("rates_per_s and mean_dwell_s need the same (non-zero) length")
        if any(not r >= 0 for r in self.rates_per_s) or not any(r > 0 for r in self.rates_per_s):
            raise ValueError(f"rates_per_s must be >= 0, one > 0, got {self.rates_per_s}")
        if any(not d > 0 for d in self.mean_dwell_s):
            raise ValueError(f"mean_dwell_s must be > 0, got {self.mean_dwell_s}")

    @property
    def mean_rate_per_s(self) -> float:
        total = sum(self.mean_dwell_s)
        return sum(r * d for r, d in zip(self.rates_per_s, self.mean_dwell_s)) / total

    def start(self, seed: int) -> ArrivalClock:
        return _MmppClock(self.rates_per_s, self.mean_dwell_s, random.Random(f"arrivals-{seed}"))


class _MmppClock(ArrivalClock):
    def __init__(self, rates: tuple[float, ...], dwell: tuple[float, ...], rng: random.Random):
        self._rates, self._dwell, self._rng = rates, dwell, rng
        self._state = 0
        self._state_end = self._draw_dwell(0.0)

    def _draw_dwell(self, now: float) -> float:
        mean = self._dwell[self._state]
        return math.inf if math.isinf(mean) else now + self._rng.expovariate(1 / mean)

    def next_after(self, now_s: float) -> float:
        t = now_s
        while True:
            rate = self._rates[self._state]
            candidate = t + self._rng.expovariate(rate) if rate > 0 else math.inf
            if candidate <= self._state_end:
                return candidate
            # NOTE(sim): memoryless, so redrawing from the state switch is exact.
            t = self._state_end
            self._state = (self._state + 1) % len(self._rates)
            self._state_end = self._draw_dwell(t)
