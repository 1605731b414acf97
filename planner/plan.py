"""The Plan: which layers each node holds, the max flow through them, and how good it is."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .maxflow import PathStats, Placement, max_flow, path_stats
from .problem import SINK, SOURCE, Problem
from .spec import SpecError

COORDINATOR = "coordinator"


@dataclass(frozen=True)
class SolverInfo:
    name: str
    seconds: float
    status: str
    """optimal | feasible | time_limit | heuristic."""


@dataclass(frozen=True)
class NodePlan:
    start: int
    end: int
    gpu: str
    capacity_tokens_per_s: float
    flow_tokens_per_s: float

    @property
    def num_layers(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Plan:
    model: str
    num_layers: int
    throughput_tokens_per_s: float
    upper_bound_tokens_per_s: float
    solver: SolverInfo
    nodes: dict[str, NodePlan]
    flows: list[tuple[str, str, float]]
    """(from, to, tokens/s); `coordinator` stands for the source and the sink."""
    stats: PathStats
    partial_inference: bool = False
    max_hops: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def gap(self) -> float:
        """Relative gap between bound and flow (0 when proven optimal)."""
        if self.upper_bound_tokens_per_s <= 0:
            return 0.0
        return max(0.0, 1 - self.throughput_tokens_per_s / self.upper_bound_tokens_per_s)

    @property
    def placement(self) -> dict[str, tuple[int, int]]:
        return {name: (node.start, node.end) for name, node in self.nodes.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "num_layers": self.num_layers,
            "throughput_tokens_per_s": _r(self.throughput_tokens_per_s),
            "upper_bound_tokens_per_s": _r(self.upper_bound_tokens_per_s),
            "gap": _r(self.gap, 6),
            "solver": {
                "name": self.solver.name,
                "seconds": _r(self.solver.seconds, 2),
                "status": self.solver.status,
            },
            "partial_inference": self.partial_inference,
            "max_hops": self.max_hops,
            "pipeline": {
                "hops_max": self.stats.hops_max,
                "hops_mean": _r(self.stats.hops_mean),
                "latency_ms_mean": _r(self.stats.latency_ms_mean),
                "latency_ms_max": _r(self.stats.latency_ms_max),
                "num_paths": self.stats.num_paths,
            },
            "nodes": {
                name: {
                    "layers": [node.start, node.end],
                    "gpu": node.gpu,
                    "capacity_tokens_per_s": _r(node.capacity_tokens_per_s),
                    "flow_tokens_per_s": _r(node.flow_tokens_per_s),
                }
                for name, node in sorted(self.nodes.items(), key=_node_order)
            },
            "flows": [{"from": u, "to": v, "tokens_per_s": _r(f)} for u, v, f in self.flows],
        }

    @staticmethod
    def from_dict(data: Any) -> Plan:
        """Read a plan (as written by to_dict); raise SpecError naming the bad field."""
        if not isinstance(data, dict):
            raise SpecError("plan", "must be a mapping")
        try:
            solver = data.get("solver") or {}
            pipeline = data.get("pipeline") or {}
            nodes: dict[str, NodePlan] = {}
            for name, entry in (data.get("nodes") or {}).items():
                layers = entry.get("layers")
                if (
                    not isinstance(layers, list)
                    or len(layers) != 2
                    or not all(isinstance(x, int) for x in layers)
                    or layers[0] >= layers[1]
                ):
                    raise SpecError(f"nodes.{name}.layers", "must be [start, end] with start < end")
                nodes[str(name)] = NodePlan(
                    layers[0],
                    layers[1],
                    str(entry.get("gpu", "")),
                    float(entry.get("capacity_tokens_per_s", 0.0)),
                    float(entry.get("flow_tokens_per_s", 0.0)),
                )
            flows = [
                (str(f["from"]), str(f["to"]), float(f["tokens_per_s"]))
                for f in data.get("flows") or []
            ]
            return Plan(
                model=str(data["model"]),
                num_layers=int(data.get("num_layers") or max(n.end for n in nodes.values())),
                throughput_tokens_per_s=float(data["throughput_tokens_per_s"]),
                upper_bound_tokens_per_s=float(data.get("upper_bound_tokens_per_s", 0.0)),
                solver=SolverInfo(
                    str(solver.get("name", "")),
                    float(solver.get("seconds", 0.0)),
                    str(solver.get("status", "")),
                ),
                nodes=nodes,
                flows=flows,
                stats=PathStats(
                    int(pipeline.get("hops_max", 0)),
                    float(pipeline.get("hops_mean", 0.0)),
                    float(pipeline.get("latency_ms_mean", 0.0)),
                    float(pipeline.get("latency_ms_max", 0.0)),
                    int(pipeline.get("num_paths", 0)),
                ),
                partial_inference=bool(data.get("partial_inference", False)),
                max_hops=data.get("max_hops"),
            )
        except KeyError as exc:
            raise SpecError(str(exc.args[0]), "missing from the plan") from None
        except (TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, SpecError):
                raise
            raise SpecError("plan", f"malformed: {exc}") from None


def _r(value: float, digits: int = 3) -> float:
    return round(value, digits) if math.isfinite(value) else value


def _node_order(item: tuple[str, NodePlan]) -> tuple[int, int, str]:
    return (item[1].start, item[1].end, item[0])


def build_plan(
    problem: Problem,
    placement: Placement,
    *,
    solver: SolverInfo,
    bound: float,
    partial: bool = False,
    max_hops: int | None = None,
    edge_flows: dict[tuple[str, str], float] | None = None,
) -> Plan:
    """Evaluate a placement exactly and package it. `edge_flows` overrides the plain max flow
    (the hop-limited evaluator passes its own)."""
    if edge_flows is None:
        result = max_flow(problem, placement, partial)
        edge_flows = result.edge_flows
    value = sum(f for (u, _), f in edge_flows.items() if u == SOURCE)
    node_flow: dict[str, float] = {}
    for (u, _), f in edge_flows.items():
        if u != SOURCE:
            node_flow[u] = node_flow.get(u, 0.0) + f
    used = {name: layers for name, layers in placement.items() if node_flow.get(name, 0.0) > 1e-6}
    nodes = {
        name: NodePlan(
            start,
            end,
            problem.node(name).gpu,
            problem.node(name).capacity(start, end, problem.num_layers),
            node_flow.get(name, 0.0),
        )
        for name, (start, end) in used.items()
    }
    flows = sorted(
        (
            (COORDINATOR if u == SOURCE else u, COORDINATOR if v == SINK else v, f)
            for (u, v), f in edge_flows.items()
            if f > 1e-6
        ),
        key=lambda e: (e[0] != COORDINATOR, e[0], e[1]),
    )
    stats = path_stats(problem, used, edge_flows)
    return Plan(
        problem.model.name,
        problem.num_layers,
        value,
        max(bound, value),
        solver,
        nodes,
        flows,
        stats,
        partial,
        max_hops,
    )
