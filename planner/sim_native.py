"""Runs a `Simulator` on the compiled event loop (`_simcore.c`) and copies its state back.

The C core implements the same model as `sim_iterations.py` and `sim_coordinator.py`, operation
for operation, so both engines give identical results (tests compare them on many
configurations). The Python side keeps the routing policy's choices at admission, the length
and arrival draws (the same seeded generators, so the same requests), and the policy's
per-iteration `observe` hook. After the run, node, recorder and coordinator state is written
back into the Python objects, so `build_result` and `check_integrity` work unchanged.

The extension is optional: it is built at install time when a C compiler is at hand
(`setup.py`, `optional=True`); without it, or for a cost model it does not know, the
pure-Python engine runs. `SimConfig(engine=...)`: `auto` (compiled when it can), `python`,
or `native` (an error when it cannot).
"""

from __future__ import annotations

import math
from collections import deque
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .sim_compute import LayerCost, RooflineCost, StageCost, TableCost, TokenRateCost
from .sim_graph import SINK
from .sim_state import Request

if TYPE_CHECKING:
    from .sim_engine import Simulator


def load_core() -> ModuleType | None:
    """The compiled module, or None when it was not built."""
    try:
        from . import _simcore  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _simcore  # type: ignore[no-any-return]


def _points(points: tuple[tuple[int, float], ...]) -> list[tuple[int, float]] | None:
    out = []
    for x, y in points:
        if type(x) is not int or type(y) not in (int, float):
            return None
        out.append((x, float(y)))
    return out


def _inner_cost(cost: LayerCost) -> tuple[Any, ...] | None:
    if type(cost) is RooflineCost:
        return (0, cost._weights_s, cost._kv_s, cost._token_s, cost._attn_s)
    if type(cost) is TableCost:
        prompt, decode = _points(cost._prompt), _points(cost._decode)
        if prompt is None or decode is None:
            return None
        return (1, prompt, decode, 0.0, 0.0)
    if type(cost) is TokenRateCost:
        return (2, cost._token_s, cost._floor_s, 0.0, 0.0)
    return None


def export_cost(cost: LayerCost) -> tuple[Any, ...] | None:
    """The C core's description of `cost`, or None for a cost class it does not implement."""
    if type(cost) is StageCost:
        inner = _inner_cost(cost.inner)
        tables = [_points(t) for t in (cost._head, cost._prompt_pass, cost._decode_pass)]
        if inner is None or any(t is None for t in tables) or type(cost._layers) is not int:
            return None
        return (*inner, (cost._layers, *tables))
    inner = _inner_cost(cost)
    return None if inner is None else (*inner, None)


def unsupported(sim: Simulator) -> str | None:
    """Why the compiled core cannot run `sim` (None when it can)."""
    if load_core() is None:
        return "the compiled simulator core (helix.planner._simcore) is not built"
    for node in sim.nodes:
        if export_cost(node.cost) is None:
            return f"node {node.name}: cost model {type(node.cost).__name__} is not compiled"
    for name in ("token_bytes", "act_bytes"):
        if type(getattr(sim, name)) is not int:
            return f"{name} is not an integer"
    return None


def run_native(sim: Simulator) -> None:
    """Run `sim` to its end on the compiled core; raises what the Python engine would."""
    core_module = load_core()
    assert core_module is not None
    coord, config, rec = sim.coord, sim.config, sim.rec
    link_index = {id(link): i for i, link in enumerate(sim.links.values())}
    nodes = []
    for node in sim.nodes:
        cost = export_cost(node.cost)
        assert cost is not None
        nodes.append(
            (
                node.num_layers,
                node.kv_capacity,
                node.lat_in_min,
                node.empty_prompt_s,
                node.empty_decode_s,
                cost,
            )
        )
    links = [
        (
            link.bps,
            link.latency_s,
            -1 if link.src is None else link.src.index,
            -1 if link.dst is None else link.dst.index,
            link.direct,
        )
        for link in sim.links.values()
    ]
    succ = [(at, [(v, layers) for v, layers, _ in entries]) for at, entries in coord.succ.items()]
    source_links = [(v, link_index[id(link)]) for v, link in coord.links.items()]
    seats = config.seats_per_node
    params = (
        sim.batch_cap,
        sim.prompt_cap,
        sim.act_bytes,
        sim.token_bytes,
        sim.partial,
        rec.start,
        rec.end,
        config.end_s,
        -1 if math.isinf(seats) else int(seats),
        -1 if coord.limit is None else coord.limit,
        coord.max_prefilling,
        coord.clock is None,
        rec.bin_s,
        len(rec.decode_bins),
    )
    route_ids: dict[tuple[int, ...], int] = {}
    routes: list[tuple[int, ...]] = []
    policy = coord.policy

    def route(need: int) -> int | None:
        path = policy.route(need, lambda at: core.feasible(at, need))
        if path is None:
            return None
        key = tuple(path)
        rid = route_ids.get(key)
        if rid is None:
            layers = coord._route(path).layers
            hops = (*key, SINK)
            outs = [link_index[id(sim.links[(u, v)])] for u, v in zip(hops, hops[1:])]
            rid = route_ids[key] = core.add_route(key, layers, outs)
            routes.append(key)
        return rid

    clock = coord.clock
    next_after = clock.next_after if clock is not None else None
    observe = sim.observe
    core = core_module.Core(
        nodes, links, succ, source_links, params, coord.lengths.draw, next_after, route, observe
    )
    sim.queued_of = core.queued
    try:
        core.run()
    finally:
        sim.queued_of = None
        _copy_back(sim, core, routes)


def _copy_back(sim: Simulator, core: Any, routes: list[tuple[int, ...]]) -> None:
    for node, state in zip(sim.nodes, core.nodes()):
        (
            node.busy,
            node.iter_start,
            node.busy_s,
            node.iterations,
            node.decode_seqs,
            node.queued,
            node.kv_used,
            node.kv_peak,
            node.kv_area,
            node.kv_last,
            node.seats,
        ) = state
        node.batch = []
    rec = sim.rec
    (
        rec.decode_bins,
        rec.prompt_bins,
        rec.decode_tokens,
        rec.prompt_tokens,
        rec.ttft,
        rec.step_latency,
        rec.step_weight,
    ) = core.recorder()
    state = core.coordinator()
    coord = sim.coord
    coord.num_created = state["num_created"]
    coord.num_admitted = state["num_admitted"]
    coord.num_completed = state["num_completed"]
    coord.num_dropped = state["num_dropped"]
    coord.prefilling = state["prefilling"]
    coord._drops_in_a_row = state["drops_in_row"]
    coord.waiting = deque(Request(*fields) for fields in state["waiting"])
    resident = set()
    for arrival_s, prompt, output, done, rid in state["resident"]:
        request = Request(arrival_s, prompt, output)
        request.done = done
        request.route = coord._route(list(routes[rid]))
        resident.add(request)
    coord.resident = resident
    sim.now, sim.last_s = state["now"], state["last_s"]
    sim.num_events += state["num_events"]


__all__ = ["export_cost", "load_core", "run_native", "unsupported"]
