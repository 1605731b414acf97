"""SamplingParams: how one request's tokens are drawn and when it stops (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass, field

_MAX_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    """The vLLM names and defaults, validated on construction (ValueError names the field)."""

    n: int = 1
    """Completions per prompt; they share the prompt's KV blocks."""
    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 1.0
    """Nucleus: keep the smallest set of tokens whose probability reaches top_p; in (0, 1]."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 or -1 keeps all."""
    min_p: float = 0.0
    """Drop tokens less likely than min_p times the most likely one; in [0, 1]."""
    seed: int | None = None
    """Per-request seed: the same seed gives the same tokens whatever else is in the batch."""
    max_tokens: int = 16
    """Most tokens to generate."""
    stop: tuple[str, ...] = ()
    """Strings that end the completion (not included in the text)."""
    stop_token_ids: tuple[int, ...] = ()
    """Token ids that end the completion besides EOS."""
    ignore_eos: bool = False
    """Keep generating after EOS (benchmarks)."""
    logprobs: int | None = None
    """Return the sampled token's log-probability and this many top alternatives (0 to 20)."""
    skip_special_tokens: bool = True
    extra: dict[str, object] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        _check(self.n >= 1, "n", f"must be >= 1, got {self.n}")
        _check(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")
        _check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        _check(self.top_k >= -1, "top_k", f"must be -1, 0 (off) or >= 1, got {self.top_k}")
        _check(0 <= self.min_p <= 1, "min_p", f"must be in [0, 1], got {self.min_p}")
        _check(self.max_tokens >= 1, "max_tokens", f"must be >= 1, got {self.max_tokens}")
        if self.logprobs is not None:
            _check(
                0 <= self.logprobs <= _MAX_LOGPROBS,
                "logprobs",
                f"must be in [0, {_MAX_LOGPROBS}], got {self.logprobs}",
            )
        _check(all(s for s in self.stop), "stop", "stop strings must be non-empty")
        if self.n > 1 and self.temperature == 0 and self.seed is None:
            pass  # n greedy copies are legal, if pointless (vLLM allows it too)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{name} {message}")
