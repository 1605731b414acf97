"""The numeric planning problem: node capacities T_i(k) and link capacities in tokens/s.

`build_problem` turns a ClusterSpec into plain numbers once, so every solver and evaluator works on
the same figures. A link of g Gbit/s carries g*1e9/8 bytes/s, divided by the bytes one token needs
on it: a hidden state between nodes, a token id on coordinator links.
"""

from __future__ import annotations

from dataclasses import dataclass

from .profile import DEFAULT_COST_MODEL, CostModel
from .spec import ClusterSpec, LinkSpec, ModelSpec, SpecError

SOURCE = "<source>"
SINK = "<sink>"


@dataclass(frozen=True)
class Edge:
    tokens_per_s: float
    latency_ms: float


@dataclass(frozen=True)
class NodeCapacity:
    """What one node can do: T(k) and latency for k = 1..max_layers, and its NIC limit."""

    name: str
    gpu: str
    region: str
    tokens_per_s: tuple[float, ...]
    latency_ms: tuple[float, ...]
    nic_tokens_per_s: float
    """Hidden states per second its NIC carries each way (inf when unlimited)."""

    @property
    def max_layers(self) -> int:
        return len(self.tokens_per_s)

    def capacity(self, start: int, end: int, num_layers: int) -> float:
        """Throughput holding [start, end): T(k), and the NIC where it moves hidden states."""
        cap = self.tokens_per_s[end - start - 1]
        if start > 0 or end < num_layers:
            cap = min(cap, self.nic_tokens_per_s)
        return cap


@dataclass(frozen=True)
class Problem:
    model: ModelSpec
    nodes: tuple[NodeCapacity, ...]
    links: dict[tuple[str, str], Edge]
    """Directed node-to-node links; absent pairs have no link."""
    source_links: dict[str, Edge]
    """Coordinator -> node (token ids in)."""
    sink_links: dict[str, Edge]
    """Node -> coordinator (sampled tokens out)."""

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    def node(self, name: str) -> NodeCapacity:
        return self._by_name[name]

    @property
    def _by_name(self) -> dict[str, NodeCapacity]:
        cached: dict[str, NodeCapacity] | None = self.__dict__.get("_by_name_cache")
        if cached is None:
            cached = {node.name: node for node in self.nodes}
            object.__setattr__(self, "_by_name_cache", cached)
        return cached


def _edge(link: LinkSpec, bytes_per_token: int) -> Edge:
    return Edge(link.gbps * 1e9 / 8 / bytes_per_token, link.latency_ms)


def build_problem(cluster: ClusterSpec, cost: CostModel = DEFAULT_COST_MODEL) -> Problem:
    """Derive every capacity; raise SpecError naming the field when the cluster cannot work."""
    model = cluster.model
    act_bytes = model.activation_bytes_per_token
    nodes: list[NodeCapacity] = []
    for i, node in enumerate(cluster.nodes):
        gpu = cluster.gpus[node.gpu]
        measured = cluster.profiles.get(node.gpu)
        profile = measured or cost.profile(gpu, model)
        if profile is None:
            raise SpecError(
                f"nodes[{i}].gpu",
                f"{node.name}: a {gpu.name} ({gpu.memory_gb:g} GB) "
                f"cannot hold one layer of {model.name} "
                f"({model.layer_bytes / 1e9:.2f} GB of weights per layer)",
            )
        max_layers = min(profile.max_layers, model.num_layers)
        tokens = profile.tokens_per_s[:max_layers]
        if measured is not None and measured.decode_layer_ms is not None:
            latency = tuple(measured.decode_layer_ms * k for k in range(1, max_layers + 1))
        else:
            latency = tuple(cost.token_latency_ms(gpu, model, k) for k in range(1, max_layers + 1))
        nic = float("inf") if node.nic_gbps is None else node.nic_gbps * 1e9 / 8 / act_bytes
        nodes.append(NodeCapacity(node.name, node.gpu, node.region, tokens, latency, nic))
    total = sum(node.max_layers for node in nodes)
    if total < model.num_layers:
        raise SpecError(
            "nodes",
            f"the cluster holds at most {total} layers in all, fewer than the "
            f"{model.num_layers} layers of {model.name}: add GPUs or pick a smaller model",
        )

    net = cluster.network
    links: dict[tuple[str, str], Edge] = {}
    specs = cluster.nodes
    for a_index, a in enumerate(specs):
        for b in specs[a_index + 1 :]:
            link = net.link(a.name, a.region, b.name, b.region)
            if link is not None:
                edge = _edge(link, act_bytes)
                links[(a.name, b.name)] = edge
                links[(b.name, a.name)] = edge
    coord, coord_region = cluster.coordinator, cluster.coordinator_region
    source_links: dict[str, Edge] = {}
    for node in specs:
        link = net.link(coord, coord_region, node.name, node.region)
        if link is not None:
            source_links[node.name] = _edge(link, cluster.token_bytes)
    if not source_links:
        raise SpecError("network", f"no link joins the coordinator {coord!r} to any node")
    return Problem(model, tuple(nodes), links, source_links, dict(source_links))
