"""Placement solvers behind one registry. Each takes a Problem and SolveOptions, returns a
SolveResult (a placement and what it knows about optimality) and does no I/O."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..maxflow import Placement, layer_bound
from ..plan import Plan, SolverInfo, build_plan
from ..problem import Problem


@dataclass(frozen=True)
class Progress:
    seconds: float
    incumbent_tokens_per_s: float
    bound_tokens_per_s: float
    message: str = ""


@dataclass(frozen=True)
class SolveOptions:
    time_limit_s: float = 60.0
    """Wall-clock budget for the search (the MILP stops at it and keeps its incumbent)."""
    partial_inference: bool = False
    """Allow i -> j when start_j <= end_i < end_j (j then runs only the tail of its range)."""
    max_hops: int | None = None
    """Limit on the nodes a request passes through; None means unlimited."""
    seed: int = 0
    progress: Callable[[Progress], None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s must be > 0, got {self.time_limit_s}")
        if self.max_hops is not None and self.max_hops < 1:
            raise ValueError(f"max_hops must be >= 1, got {self.max_hops}")


@dataclass(frozen=True)
class SolveResult:
    placement: Placement
    status: str
    """optimal | feasible | time_limit | heuristic | infeasible."""
    bound_tokens_per_s: float | None = None
    """A proven upper bound on the best flow for these options, when the solver has one."""
    edge_flows: dict[tuple[str, str], float] | None = None
    """Flows to use instead of the plain max flow (hop-limited solutions)."""
    partial_inference: bool | None = None
    """Set when the solver's flows rely on partial inference whatever the options say (Petals)."""


SolverFn = Callable[[Problem, SolveOptions], SolveResult]
SOLVERS: dict[str, SolverFn] = {}


def register(name: str) -> Callable[[SolverFn], SolverFn]:
    def wrap(fn: SolverFn) -> SolverFn:
        SOLVERS[name] = fn
        return fn

    return wrap


def _load_builtin() -> None:
    from . import baselines, greedy, milp  # noqa: F401  (registration side effect)


def solver_names() -> list[str]:
    _load_builtin()
    return sorted(SOLVERS)


def solve(problem: Problem, solver: str = "milp", options: SolveOptions | None = None) -> Plan:
    """Run a solver, evaluate its placement exactly; the Plan carries the tightest valid bound."""
    _load_builtin()
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose from {', '.join(sorted(SOLVERS))}")
    options = options or SolveOptions()
    if options.max_hops is not None:
        from ..hops import min_hops

        fewest = min_hops(problem)
        if options.max_hops < fewest:
            raise ValueError(
                f"max_hops={options.max_hops} is infeasible: a route needs at least "
                f"{fewest} nodes to hold all {problem.num_layers} layers"
            )
    started = time.perf_counter()
    result = SOLVERS[solver](problem, options)
    seconds = time.perf_counter() - started
    bound = layer_bound(problem)
    if result.bound_tokens_per_s is not None:
        bound = min(bound, result.bound_tokens_per_s)
    edge_flows = result.edge_flows
    if edge_flows is None and options.max_hops is not None:
        from ..hops import hop_limited_flow

        edge_flows = hop_limited_flow(
            problem, result.placement, options.max_hops, options.partial_inference
        )
    partial = options.partial_inference
    if result.partial_inference is not None:
        partial = result.partial_inference
    return build_plan(
        problem,
        result.placement,
        solver=SolverInfo(solver, seconds, result.status),
        bound=bound,
        partial=partial,
        max_hops=options.max_hops,
        edge_flows=edge_flows,
    )
