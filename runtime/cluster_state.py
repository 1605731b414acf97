"""What the coordinator knows of each node and of each request it serves (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .outputs import CompletionOutput
from .sampling_params import SamplingParams


@dataclass
class NodeInfo:
    """A node of the plan as the coordinator tracks it (layers are [start, end))."""

    name: str
    address: str
    layers: tuple[int, int]
    num_kv_blocks: int = 0
    block_size: int = 16
    reserved_blocks: int = 0
    alive: bool = False
    incarnation: int = 0
    last_seen: float = 0.0
    busy_s: float = 0.0
    """How long the node's current pass had run at its last heartbeat."""
    tokens_per_s: float = 0.0
    gpu_kind: str = "unknown"


NO_CAP = 1 << 40
"""No limit on prefix-cache use."""


@dataclass
class ClusterRequest:
    """One sample of a request: its tokens so far, its route and what is in flight."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    output: CompletionOutput
    detokenizer: Any
    max_tokens: int
    tokens: list[int] = field(default_factory=list)
    route: list[str] | None = None
    num_computed: int = 0
    in_flight: int | None = None
    params_sent: bool = False
    reserved: int = 0
    error: str | None = None
    num_reroutes: int = 0
    cache_cap: int = NO_CAP
    """The most prompt tokens its route may take from prefix caches (lowered by a prefix miss)."""
    num_cached: int = 0
    """Prompt tokens its first pass took from the route's prefix caches."""

    @property
    def finished(self) -> bool:
        return self.output.finish_reason is not None


def wire_params(params: SamplingParams) -> dict[str, Any]:
    """The sampling fields every node of a route needs (sent with a request's first pass): the
    last one samples; all of them salt their prefix-cache hashes with `cache_salt`."""
    salt = params.extra.get("cache_salt")
    return {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "min_p": params.min_p,
        "seed": params.seed,
        "max_tokens": params.max_tokens,
        "logprobs": params.logprobs,
        "extra": {} if salt is None else {"cache_salt": str(salt)},
    }
