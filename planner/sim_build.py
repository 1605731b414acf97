"""Builds a simulation's nodes (compute cost, KV capacity, NIC) and links from the cluster spec.

Each directed pair of endpoints gets one `Link` whose `bps` is already the slowest of the link and
the two ends' NICs, so a transfer's duration is one division in the event loop.
"""

from __future__ import annotations

import math

from .sim_compute import LayerTables, kv_capacity_entries, node_layer_cost, profile_tables
from .sim_graph import RouteGraph
from .sim_state import Link, Node
from .simulate import SimConfig
from .spec import ClusterSpec, SpecError


def build_nodes(
    cluster: ClusterSpec, graph: RouteGraph, config: SimConfig, tables: dict[str, LayerTables]
) -> list[Node]:
    specs = {node.name: node for node in cluster.nodes}
    nodes = []
    for index, (name, layers) in enumerate(zip(graph.names, graph.ranges)):
        spec = specs[name]
        gpu = cluster.gpus[spec.gpu]
        profile = cluster.profiles.get(spec.gpu)
        table = tables.get(spec.gpu) or profile_tables(profile)
        k = layers[1] - layers[0]
        try:
            cost = node_layer_cost(
                gpu, cluster.model, config.cost, k, profile, table, config.compute
            )
        except SpecError as exc:
            field = "compute" if exc.path == "compute" else f"plan.nodes.{name}.layers"
            raise SpecError(field, f"{name}: {exc.message}") from None
        capacity = kv_capacity_entries(gpu, cluster.model, config.cost, k)
        nic = math.inf if spec.nic_gbps is None else spec.nic_gbps * 1e9 / 8
        nodes.append(Node(index, name, spec.gpu, layers, cost, capacity, nic))
    return nodes


def build_links(
    cluster: ClusterSpec, graph: RouteGraph, nodes: list[Node]
) -> dict[tuple[int, int], Link]:
    """One Link per edge of the route graph; each node's `out` maps its successors to them."""
    regions = {node.name: node.region for node in cluster.nodes}

    def endpoint(i: int) -> tuple[str, str]:
        if i < 0:  # SOURCE or SINK: the coordinator
            return cluster.coordinator, cluster.coordinator_region
        name = graph.names[i]
        return name, regions[name]

    links: dict[tuple[int, int], Link] = {}
    for u, successors in graph.succ.items():
        for v in successors:
            spec = cluster.network.link(*endpoint(u), *endpoint(v))
            assert spec is not None  # the graph only has edges whose link exists
            src = nodes[u] if u >= 0 else None
            dst = nodes[v] if v >= 0 else None
            bps = spec.gbps * 1e9 / 8
            for end in (src, dst):
                if end is not None and end.nic_bps < bps:
                    bps = end.nic_bps
            link = links[(u, v)] = Link(bps, spec.latency_ms / 1e3, src, dst)
            if src is not None:
                src.out[v] = link
            if dst is not None:
                dst.lat_in_min = min(dst.lat_in_min, link.latency_s)
    for link in links.values():
        link.direct = link.dst is not None and link.latency_s <= link.dst.lat_in_min
    return links
