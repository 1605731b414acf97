"""What a request returns (the vLLM shapes): RequestOutput with one CompletionOutput per sample."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    """"stop" (EOS, stop token or string), "length", "abort" or "error"."""
    stop_reason: int | str | None = None
    """The stop string or token id that ended it, when one did."""
    logprobs: list[dict[int, float]] | None = None
    """Per generated token: {token_id: logprob} for the sampled token and the top alternatives."""
    cumulative_logprob: float | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    error: str | None = None
    num_cached_tokens: int = 0
    """Prompt tokens served from the prefix cache."""
