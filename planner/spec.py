"""Plain, frozen descriptions of a model and a heterogeneous cluster (units in every field name).

Nothing here parses YAML or does I/O: `helix.config` builds these from a cluster file, and the
solvers read them through `helix.planner.problem.Problem`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class SpecError(ValueError):
    """Bad cluster or model description. `path` names the offending field (e.g. `nodes[3].gpu`)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a decoder-only transformer, enough to size weights, KV cache and activations."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    head_dim: int = 0
    """0 means hidden_size // num_heads."""
    tie_word_embeddings: bool = False
    dtype_bytes: int = 2
    """Bytes per weight, KV entry and activation element (2 for fp16/bf16)."""

    def __post_init__(self) -> None:
        for name in (
            "num_layers",
            "hidden_size",
            "num_heads",
            "num_kv_heads",
            "intermediate_size",
            "vocab_size",
            "dtype_bytes",
        ):
            if getattr(self, name) <= 0:
                raise SpecError(
                    f"model.{name}", f"must be a positive integer, got {getattr(self, name)}"
                )
        if self.num_heads % self.num_kv_heads:
            raise SpecError("model.num_kv_heads", "must divide num_heads")

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def params_per_layer(self) -> int:
        q_out = self.num_heads * self.head_size
        kv_out = 2 * self.num_kv_heads * self.head_size
        attention = self.hidden_size * (q_out + kv_out) + q_out * self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size
        return attention + mlp + 2 * self.hidden_size

    @property
    def layer_bytes(self) -> int:
        return self.params_per_layer * self.dtype_bytes

    @property
    def kv_bytes_per_token_layer(self) -> int:
        """KV cache bytes for one token in one layer (keys and values)."""
        return 2 * self.num_kv_heads * self.head_size * self.dtype_bytes

    @property
    def activation_bytes_per_token(self) -> int:
        """Bytes sent between pipeline stages per token (one hidden state)."""
        return self.hidden_size * self.dtype_bytes

    @property
    def flops_per_token_layer(self) -> int:
        """Matmul FLOPs per token per layer, attention over the context excluded."""
        return 2 * self.params_per_layer


@dataclass(frozen=True)
class GpuSpec:
    """One GPU kind (or a multi-GPU machine treated as one kind)."""

    name: str
    memory_gb: float
    bf16_tflops: float
    hbm_gbps: float
    """Memory bandwidth in GB/s."""

    def __post_init__(self) -> None:
        for name in ("memory_gb", "bf16_tflops", "hbm_gbps"):
            if not getattr(self, name) > 0:
                raise SpecError(
                    f"gpus.{self.name}.{name}", f"must be > 0, got {getattr(self, name)}"
                )


@dataclass(frozen=True)
class Profile:
    """Measured capacity of one GPU kind for one model: T(k) = tokens/s while holding k layers."""

    max_layers: int
    tokens_per_s: tuple[float, ...]
    decode_layer_ms: float | None = None
    """Optional measured time of one decode step per layer, used only for latency estimates."""
    prompt_layer_ms_by_tokens: tuple[tuple[int, float], ...] | None = None
    """Measured per-layer prompt time against batch tokens (`helix profile`), for the simulator."""
    decode_layer_ms_by_batch: tuple[tuple[int, float], ...] | None = None
    """Measured per-layer decode step time against batch size (`helix profile`)."""
    head_ms_by_batch: tuple[tuple[int, float], ...] | None = None
    """Measured final norm + LM head + sampling time against sampled sequences (`helix
    profile`): what the node holding the last layer adds to each pass."""
    prompt_pass_ms_by_tokens: tuple[tuple[int, float], ...] | None = None
    """Measured time a node spends per prompt pass of N tokens outside its layers (messages in and
    out, batch set-up); None: not measured, counted as 0."""
    decode_pass_ms_by_batch: tuple[tuple[int, float], ...] | None = None
    """The same per decode pass of N sequences."""

    def __post_init__(self) -> None:
        if self.max_layers < 1:
            raise SpecError("max_layers", f"must be >= 1, got {self.max_layers}")
        if len(self.tokens_per_s) != self.max_layers:
            raise SpecError(
                "tokens_per_s",
                f"needs {self.max_layers} entries (one per k), got {len(self.tokens_per_s)}",
            )
        for k, value in enumerate(self.tokens_per_s, start=1):
            if not value > 0:
                raise SpecError(f"tokens_per_s[{k - 1}]", f"must be > 0, got {value}")


@dataclass(frozen=True)
class NodeSpec:
    name: str
    gpu: str
    region: str = "default"
    nic_gbps: float | None = None
    """Network interface rate in Gbit/s, each direction; None means unlimited."""
    address: str | None = None
    """ZeroMQ endpoint for the runtime, e.g. tcp://10.0.0.5:7000."""


@dataclass(frozen=True)
class LinkSpec:
    """A directed-capacity link: each direction carries `gbps` on its own."""

    gbps: float
    latency_ms: float = 0.0

    def __post_init__(self) -> None:
        if not self.gbps > 0:
            raise SpecError("gbps", f"must be > 0, got {self.gbps}")
        if self.latency_ms < 0:
            raise SpecError("latency_ms", f"must be >= 0, got {self.latency_ms}")


@dataclass(frozen=True)
class NetworkSpec:
    """Link rules, most specific first: `links`, `region_links`, intra/inter region, `default`."""

    default: LinkSpec | None = None
    intra_region: LinkSpec | None = None
    inter_region: LinkSpec | None = None
    region_links: tuple[tuple[str, str, LinkSpec], ...] = ()
    links: tuple[tuple[str, str, LinkSpec], ...] = ()

    def link(self, a: str, region_a: str, b: str, region_b: str) -> LinkSpec | None:
        """The link between two endpoints, or None when no rule connects them."""
        for x, y, spec in self.links:
            if {x, y} == {a, b}:
                return spec
        for x, y, spec in self.region_links:
            if {x, y} == {region_a, region_b}:
                return spec
        if region_a == region_b and self.intra_region is not None:
            return self.intra_region
        if region_a != region_b and self.inter_region is not None:
            return self.inter_region
        return self.default


@dataclass(frozen=True)
class ClusterSpec:
    """A model plus the GPUs that will serve it and the network between them."""

    model: ModelSpec
    gpus: dict[str, GpuSpec]
    nodes: tuple[NodeSpec, ...]
    network: NetworkSpec = field(default_factory=NetworkSpec)
    profiles: dict[str, Profile] = field(default_factory=dict)
    coordinator: str = "coordinator"
    coordinator_region: str = "default"
    token_bytes: int = 4
    """Bytes per token id on coordinator links (int32)."""
    coordinator_address: str | None = None
    """ZeroMQ endpoint the coordinator binds (runtime only)."""
    model_source: str | None = None
    """What the cluster file said for `model` (a built-in name or a path), for the runtime."""

    def __post_init__(self) -> None:
        if not self.nodes:
            raise SpecError("nodes", "the cluster has no nodes")
        seen: set[str] = set()
        for i, node in enumerate(self.nodes):
            if node.name in seen or node.name == self.coordinator:
                raise SpecError(f"nodes[{i}].name", f"duplicate name {node.name!r}")
            seen.add(node.name)
            if node.gpu not in self.gpus:
                raise SpecError(
                    f"nodes[{i}].gpu",
                    f"unknown GPU kind {node.gpu!r}; known: {', '.join(sorted(self.gpus))}",
                )
            if node.nic_gbps is not None and not node.nic_gbps > 0:
                raise SpecError(f"nodes[{i}].nic_gbps", f"must be > 0, got {node.nic_gbps}")
