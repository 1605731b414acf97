"""Discrete-event simulation of a plan on its cluster: `simulate(cluster, plan, SimConfig())`.

    from helix.planner.simulate import SimConfig, simulate
    result = simulate(cluster, plan, SimConfig(routing="maxflow", mode="online", rate_per_s=2.0))
    result.decode_tokens_per_s, result.prompt_latency.p99_s

What is modelled (pure Python, deterministic for a seed):

- **Requests.** A prompt pass, then one decode step per output token. Each pass walks the route
  coordinator -> node -> ... -> coordinator; decode step n+1 leaves when step n's token is back.
- **Admission.** A routing policy (`sim_routing.py`) fixes the whole route; the request reserves
  (prompt + output) x layers-run KV entries on every node of it, released when it finishes.
  Requests that fit no route wait in FIFO order. `offline` keeps admitting new requests while
  they fit (at most `max_prefilling` awaiting their first token); `online` draws arrivals
  (Poisson or MMPP, `sim_workload.py`).
- **Nodes.** Continuous batching, one iteration at a time over everything queued: all queued decode
  steps, plus whole prompts up to `prompt_max_tokens`. An iteration costs, per layer run,
  `prompt_s(P) + decode_s(D)` from `sim_compute.py`.
  The node holding the last layer also pays the measured LM head + sampling time per pass.
- **Links.** latency + bytes / bandwidth, hidden states in the model's dtype between nodes, token
  ids to and from the coordinator; each transfer is serialised on its link direction and on both
  ends' NICs (one NIC per node, shared by all its links, each direction on its own).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from .plan import Plan
from .problem import build_problem
from .profile import DEFAULT_COST_MODEL, CostModel
from .sim_compute import COMPUTE_SOURCES, LayerTables, add_head_costs, profile_tables
from .sim_metrics import LatencyStats, SimResult
from .sim_routing import ROUTING, routing_names
from .sim_workload import Arrivals, LengthSpec, PoissonArrivals
from .spec import ClusterSpec

MODES = ("offline", "online")
ENGINES = ("auto", "native", "python")


@dataclass(frozen=True)
class SimConfig:
    """One simulation run. Every field is checked in `__post_init__` (ValueError names it)."""

    routing: str = "maxflow"
    """A name from `sim_routing.ROUTING`: maxflow, random, swarm, shortest-queue."""
    mode: str = "offline"
    """`offline`: keep the cluster full; `online`: requests arrive by `arrivals`/`rate_per_s`."""
    rate_per_s: float | None = None
    """Online Poisson arrival rate (shorthand for `arrivals=PoissonArrivals(rate_per_s)`)."""
    arrivals: Arrivals | None = None
    """Online arrival process (Poisson or MMPP); overrides `rate_per_s`."""
    duration_s: float = 600.0
    """Length of the measured window, after the warm-up."""
    warmup_s: float = 60.0
    """Simulated time before measuring starts."""
    seed: int = 0
    lengths: LengthSpec = field(default_factory=LengthSpec)
    num_requests: int | None = None
    """Stop creating requests after this many (the run then drains); None: no limit."""
    max_prefilling: int | None = None
    """Offline: admitted requests that may await their first token at once (a ramp-up instead
    of a flood of prompts at t = 0); None: twice the plan's node count."""
    prompt_max_tokens: int = 2048
    """Prompt tokens one iteration may take (a longer prompt still runs, alone)."""
    max_batch_seqs: int | None = None
    """Decode steps one iteration may take (vLLM's max_num_seqs); None: `cost.max_batch`."""
    max_seqs_per_node: int | None = None
    """Requests a node may hold reservations for at once; None: only KV limits them."""
    bin_s: float | None = None
    """Timeline bin width; None: about 1/100 of the run, at least 1 s."""
    compute: str = "auto"
    """Per-layer times: `auto` (measured tables, else the datasheet roofline, else T(k)),
    `roofline`, or `profile` (measured tables, else T(k)); see `sim_compute`."""
    cost: CostModel = DEFAULT_COST_MODEL
    engine: str = "auto"
    """Event loop: `auto` (the compiled core when built, else Python), `native`, `python`.
    Both give identical results; the compiled one is ~10x faster (see `sim_native`)."""

    def __post_init__(self) -> None:
        if self.routing not in ROUTING:
            raise ValueError(
                f"routing must be one of {', '.join(routing_names())}, got {self.routing!r}"
            )
        if self.mode not in MODES:
            raise ValueError(f"mode must be offline or online, got {self.mode!r}")
        if self.rate_per_s is not None and not self.rate_per_s > 0:
            raise ValueError(f"rate_per_s must be > 0, got {self.rate_per_s}")
        if self.mode == "online" and self.rate_per_s is None and self.arrivals is None:
            raise ValueError("rate_per_s (or arrivals) is required in online mode")
        if not self.duration_s > 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")
        if not self.warmup_s >= 0:
            raise ValueError(f"warmup_s must be >= 0, got {self.warmup_s}")
        for name in ("num_requests", "max_seqs_per_node", "max_batch_seqs", "max_prefilling"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.prompt_max_tokens < 1:
            raise ValueError(f"prompt_max_tokens must be >= 1, got {self.prompt_max_tokens}")
        if self.compute not in COMPUTE_SOURCES:
            raise ValueError(
                f"compute must be one of {', '.join(COMPUTE_SOURCES)}, got {self.compute!r}"
            )
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.bin_s is not None and not self.bin_s > 0:
            raise ValueError(f"bin_s must be > 0, got {self.bin_s}")

    @property
    def arrival_process(self) -> Arrivals | None:
        if self.mode != "online":
            return None
        if self.arrivals is not None:
            return self.arrivals
        assert self.rate_per_s is not None  # checked in __post_init__
        return PoissonArrivals(self.rate_per_s)

    @property
    def seats_per_node(self) -> float:
        return math.inf if self.max_seqs_per_node is None else self.max_seqs_per_node

    @property
    def batch_seqs(self) -> int:
        return self.max_batch_seqs or self.cost.max_batch

    @property
    def end_s(self) -> float:
        return self.warmup_s + self.duration_s


def simulate(
    cluster: ClusterSpec,
    plan: Plan,
    config: SimConfig | None = None,
    *,
    tables: Mapping[str, LayerTables] | None = None,
) -> SimResult:
    """Run `plan` on `cluster`. `tables` ({GPU kind: measured LayerTables}) overrides what the
    cluster's profiles carry. Raises SpecError (a ValueError) naming the bad plan field."""
    from .sim_engine import Simulator

    config = config or SimConfig()
    problem = build_problem(cluster, config.cost)
    started = time.perf_counter()
    sim = Simulator(cluster, problem, plan, config, dict(tables or {}))
    if config.compute != "roofline":  # the last stage's LM head, where a profile measured it
        measured = {kind: profile_tables(p) for kind, p in cluster.profiles.items()}
        add_head_costs(sim.nodes, cluster.model.num_layers, {**measured, **(tables or {})})
    sim.run()
    return sim.result(wall_s=time.perf_counter() - started)


__all__ = ["LatencyStats", "LayerTables", "LengthSpec", "SimConfig", "SimResult", "simulate"]
