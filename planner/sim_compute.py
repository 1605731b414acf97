"""Per-node compute and KV capacity for the simulator: seconds per layer as a function of batch.

A node's iteration runs P prompt tokens and D decode sequences through each of its layers and
costs, per layer, `prompt_s(P) + decode_s(D)` (the Helix paper's additive accounting, which is also
how `CostModel.tokens_per_s` defines T(k)). Sources, chosen per GPU kind by `compute="auto"`:

1. **Measured tables** (`helix profile` writes them): `prompt_layer_ms_by_tokens` and
   `decode_layer_ms_by_batch`, interpolated linearly between points and extrapolated with the last
   segment's slope (like the artifact's `*_bs2time.csv` lookups).
2. **The roofline** (`CostModel`) from the GPU's datasheet numbers (bf16 TFLOP/s, HBM GB/s), with
   the batch's real token counts and contexts. For the paper's GPUs it lands close to the
   artifact's measured per-layer times (A100 / L4 / T4 decode ~1.4 / 7 / 7 ms, prompt of 750
   tokens ~10 / 28 / 46 ms).
3. **T(k) alone** (`compute="profile"`, or a GPU without datasheet numbers): the profile's
   `tokens_per_s` read literally. A node holding k layers spends `1 / (k * T(k))` seconds per token
   per layer, prompt or decode, whatever the batch, so it runs at exactly T(k) tokens/s when
   busy. A decode iteration never takes less than `decode_layer_ms` per layer when the profile
   gives it (a batch of one still reads all the weights).

**Per-pass work beside the layers.** The node holding the model's last layer also runs the final
norm, the LM head and sampling for every sequence a pass samples (`head_ms_by_batch`; for a 135M
model the head weighs as much as ~8 of its 30 layers). Every node also spends time per pass
outside its layers: the ZeroMQ message in and out, its codec, batch set-up and KV bookkeeping
(`prompt_pass_ms_by_tokens`, `decode_pass_ms_by_batch`, measured by `helix profile` through the
runtime's own node code). Where the measured tables carry them, `add_head_costs` wraps a node's
cost in `StageCost`, which adds them once per pass; an old profile without them adds nothing.

KV capacity always comes from memory: what `CostModel.memory_utilization` of the GPU leaves after
the node's weights, counted in token-layer entries (one token cached in one layer).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .profile import CostModel
from .spec import GpuSpec, ModelSpec, Profile, SpecError

TABLE_KEYS = ("prompt_layer_ms_by_tokens", "decode_layer_ms_by_batch")
"""Profile keys the simulator reads beyond `max_layers`, `tokens_per_s`, `decode_layer_ms`."""
HEAD_KEY = "head_ms_by_batch"
"""Optional: ms of final norm + LM head + sampling for N sampled sequences (the last stage)."""
PASS_KEYS = ("prompt_pass_ms_by_tokens", "decode_pass_ms_by_batch")
"""Optional: ms a node spends per pass outside its layers (messages, batch set-up), against
prompt tokens and decode sequences; absent means 0."""
OPTIONAL_KEYS = (HEAD_KEY, *PASS_KEYS)


@dataclass(frozen=True)
class LayerTables:
    """Measured per-layer times: ((batch tokens or sequences, ms), ...), sorted by the first."""

    prompt_layer_ms_by_tokens: tuple[tuple[int, float], ...]
    """One layer, a batch of N prompt tokens (whole prompts)."""
    decode_layer_ms_by_batch: tuple[tuple[int, float], ...]
    """One layer, N sequences decoding one token each (context ~128 when measured)."""
    head_ms_by_batch: tuple[tuple[int, float], ...] = ()
    """Last stage only: N sampled sequences through norm, LM head and sampling; () unmeasured."""
    prompt_pass_ms_by_tokens: tuple[tuple[int, float], ...] = ()
    """Every node: a prompt pass of N tokens, outside the layers (messages, set-up); () = 0."""
    decode_pass_ms_by_batch: tuple[tuple[int, float], ...] = ()
    """Every node: a decode pass of N sequences, outside the layers; () = 0."""

    def __post_init__(self) -> None:
        for name in (*TABLE_KEYS, *OPTIONAL_KEYS):
            points = getattr(self, name)
            if not points and name not in OPTIONAL_KEYS:
                raise SpecError(name, "needs at least one {batch: ms} point")
            for n, ms in points:
                if n < 1 or not ms > 0 or not math.isfinite(ms):
                    raise SpecError(f"{name}.{n}", f"needs batch >= 1 and ms > 0, got {ms}")
            if [n for n, _ in points] != sorted({n for n, _ in points}):
                raise SpecError(name, "batch sizes must be distinct and sorted")


def parse_layer_tables(entry: Mapping[str, Any], path: str = "profile") -> LayerTables | None:
    """Read the two tables from a raw profile entry (a YAML mapping); None when both are absent.

    Raises SpecError naming `path.key` for a malformed table; call it from the cluster loader.
    """
    present = [key for key in TABLE_KEYS if entry.get(key) is not None]
    if not present:
        extra = next((key for key in OPTIONAL_KEYS if entry.get(key) is not None), None)
        if extra is not None:
            raise SpecError(f"{path}.{TABLE_KEYS[0]}", f"missing (it comes with {extra})")
        return None
    if len(present) == 1:
        missing = next(key for key in TABLE_KEYS if key not in present)
        raise SpecError(f"{path}.{missing}", f"missing (it comes with {present[0]})")
    tables: dict[str, tuple[tuple[int, float], ...]] = {}
    for key in (*TABLE_KEYS, *OPTIONAL_KEYS):
        raw = entry.get(key)
        if raw is None and key in OPTIONAL_KEYS:
            continue
        if not isinstance(raw, Mapping) or not raw:
            raise SpecError(f"{path}.{key}", "must be a non-empty mapping {batch: ms}")
        points = []
        for n, ms in raw.items():
            ok = isinstance(n, int) and not isinstance(n, bool)
            ok = ok and isinstance(ms, (int, float)) and not isinstance(ms, bool)
            if not ok:
                raise SpecError(f"{path}.{key}.{n}", f"must map an integer to ms, got {ms!r}")
            points.append((int(n), float(ms)))
        tables[key] = tuple(sorted(points))
    try:
        return LayerTables(**tables)
    except SpecError as exc:
        raise SpecError(f"{path}.{exc.path}", exc.message) from None


def profile_tables(profile: Profile | None) -> LayerTables | None:
    """The tables a loaded Profile carries (once `Profile` has the two fields), else None."""
    if profile is None:
        return None
    raw = {key: getattr(profile, key, None) for key in (*TABLE_KEYS, *OPTIONAL_KEYS)}
    if all(raw[key] is None for key in TABLE_KEYS):
        return None
    if isinstance(raw[TABLE_KEYS[0]], Mapping):
        return parse_layer_tables(raw)
    return LayerTables(**{k: tuple(sorted(v or ())) for k, v in raw.items()})


class LayerCost(ABC):
    """Seconds for one layer of one iteration. Both methods return 0 for an empty batch."""

    @abstractmethod
    def prompt_s(self, num_tokens: int, sum_sq_tokens: int) -> float:
        """`num_tokens` prompt tokens in all; `sum_sq_tokens` = sum of each prompt's length^2."""

    @abstractmethod
    def decode_s(self, num_seqs: int, context_tokens: int) -> float:
        """`num_seqs` sequences, one new token each, `context_tokens` cached tokens in all."""


class RooflineCost(LayerCost):
    """The cost model's roofline with the batch's actual sizes."""

    def __init__(self, gpu: GpuSpec, model: ModelSpec, cost: CostModel):
        flops = gpu.bf16_tflops * 1e12 * cost.compute_efficiency
        bandwidth = gpu.hbm_gbps * 1e9 * cost.bandwidth_efficiency
        self._weights_s = model.layer_bytes / bandwidth
        self._kv_s = model.kv_bytes_per_token_layer / bandwidth
        self._token_s = model.flops_per_token_layer / flops
        self._attn_s = model.num_heads * model.head_size / flops

    def prompt_s(self, num_tokens: int, sum_sq_tokens: int) -> float:
        if num_tokens <= 0:
            return 0.0
        # NOTE(sim): matches CostModel.prompt_layer_s: compute plus one read of the weights.
        return num_tokens * self._token_s + 2 * sum_sq_tokens * self._attn_s + self._weights_s

    def decode_s(self, num_seqs: int, context_tokens: int) -> float:
        if num_seqs <= 0:
            return 0.0
        memory_s = self._weights_s + context_tokens * self._kv_s
        compute_s = num_seqs * self._token_s + 4 * context_tokens * self._attn_s
        return memory_s if memory_s > compute_s else compute_s


def _interpolate(points: tuple[tuple[int, float], ...], x: float) -> float:
    """Linear through the points, the last segment's slope beyond them, proportional below."""
    if x <= points[0][0]:
        return points[0][1] * x / points[0][0]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if len(points) == 1:
        return points[0][1] * x / points[0][0]
    (x0, y0), (x1, y1) = points[-2], points[-1]
    return y1 + max(0.0, (y1 - y0) / (x1 - x0)) * (x - x1)


class TableCost(LayerCost):
    """Measured tables; prompt time depends on total tokens, decode time on sequences."""

    def __init__(self, tables: LayerTables):
        self._prompt = tables.prompt_layer_ms_by_tokens
        self._decode = tables.decode_layer_ms_by_batch

    def prompt_s(self, num_tokens: int, sum_sq_tokens: int) -> float:
        return 0.0 if num_tokens <= 0 else _interpolate(self._prompt, num_tokens) / 1e3

    def decode_s(self, num_seqs: int, context_tokens: int) -> float:
        return 0.0 if num_seqs <= 0 else _interpolate(self._decode, num_seqs) / 1e3


def typical_tokens_per_s(
    layer_cost: LayerCost, num_layers: int, batch: int, prompt_tokens: int, decode_tokens: int
) -> float:
    """T(k) of the cost model's accounting for any LayerCost: a typical request's prompt and
    decode tokens over the node time it takes, decode steps shared by `batch` sequences."""
    context = batch * (prompt_tokens + decode_tokens // 2)
    per_layer_s = layer_cost.prompt_s(prompt_tokens, prompt_tokens**2) + (
        decode_tokens * layer_cost.decode_s(batch, context) / batch
    )
    return (prompt_tokens + decode_tokens) / (num_layers * per_layer_s)


class TokenRateCost(LayerCost):
    """T(k) read literally: every token costs `1 / (k * T(k))` per layer; decode iterations take
    at least `floor_s` per layer."""

    def __init__(self, tokens_per_s: float, num_layers: int, floor_s: float = 0.0):
        self._token_s = 1.0 / (num_layers * tokens_per_s)
        self._floor_s = floor_s

    def prompt_s(self, num_tokens: int, sum_sq_tokens: int) -> float:
        return num_tokens * self._token_s

    def decode_s(self, num_seqs: int, context_tokens: int) -> float:
        return 0.0 if num_seqs <= 0 else max(self._floor_s, num_seqs * self._token_s)


class StageCost(LayerCost):
    """`inner` plus what a node pays once per pass beside its layers, spread over its
    `num_layers` layers (the simulator multiplies a layer's cost by them, so a pass pays it once):
    the last stage's `head` time, and every node's `prompt_pass` / `decode_pass` time (messages,
    batch set-up; by prompt tokens / decode sequences). Empty tables add nothing.

    A prompt pass samples one row per prompt; the count is estimated from the batch's sums as
    tokens^2 / sum of squared lengths (exact for prompts of one length, never more than the
    count). A pass mixing prompts and decode steps pays each part's head and pass time (one call
    in the runtime; both grow less than linearly with rows, so this slightly overcounts). Under
    partial inference a pass running fewer layers pays a smaller share."""

    def __init__(
        self,
        inner: LayerCost,
        num_layers: int,
        head: tuple[tuple[int, float], ...] = (),
        prompt_pass: tuple[tuple[int, float], ...] = (),
        decode_pass: tuple[tuple[int, float], ...] = (),
    ):
        self.inner, self._layers, self._head = inner, num_layers, head
        self._prompt_pass, self._decode_pass = prompt_pass, decode_pass

    def _per_layer_s(self, points: tuple[tuple[int, float], ...], n: int) -> float:
        return _interpolate(points, n) / 1e3 / self._layers if points else 0.0

    def prompt_s(self, num_tokens: int, sum_sq_tokens: int) -> float:
        if num_tokens <= 0:
            return 0.0
        rows = max(1, round(num_tokens * num_tokens / sum_sq_tokens)) if sum_sq_tokens > 0 else 1
        return (
            self.inner.prompt_s(num_tokens, sum_sq_tokens)
            + self._per_layer_s(self._head, rows)
            + self._per_layer_s(self._prompt_pass, num_tokens)
        )

    def decode_s(self, num_seqs: int, context_tokens: int) -> float:
        if num_seqs <= 0:
            return 0.0
        return (
            self.inner.decode_s(num_seqs, context_tokens)
            + self._per_layer_s(self._head, num_seqs)
            + self._per_layer_s(self._decode_pass, num_seqs)
        )


class _SimNode(Protocol):
    gpu: str
    layers: tuple[int, int]
    cost: LayerCost


def add_head_costs(
    nodes: Sequence[_SimNode], num_layers: int, tables: Mapping[str, LayerTables | None]
) -> None:
    """Wrap node costs in StageCost where their GPU kind's tables ({kind: tables}) measured
    per-pass work: the head on every node holding layer `num_layers - 1`, the pass time
    (messages, batch set-up) on every node."""
    for node in nodes:
        table = tables.get(node.gpu)
        if table is None:
            continue
        head = table.head_ms_by_batch if node.layers[1] == num_layers else ()
        passes = (table.prompt_pass_ms_by_tokens, table.decode_pass_ms_by_batch)
        if head or any(passes):
            k = node.layers[1] - node.layers[0]
            node.cost = StageCost(node.cost, k, head, *passes)


COMPUTE_SOURCES = ("auto", "roofline", "profile")


def has_datasheet(gpu: GpuSpec) -> bool:
    return bool(getattr(gpu, "bf16_tflops", 0)) and bool(getattr(gpu, "hbm_gbps", 0))


def node_layer_cost(
    gpu: GpuSpec,
    model: ModelSpec,
    cost: CostModel,
    num_layers: int,
    profile: Profile | None = None,
    tables: LayerTables | None = None,
    source: str = "auto",
) -> LayerCost:
    """The LayerCost of a node of this GPU kind holding `num_layers` layers (see module doc).

    `source`: `auto` (tables, else roofline, else T(k)), `roofline`, or `profile` (tables, else
    T(k)). Raises SpecError naming `compute` or `layers` when the chosen source is missing."""
    if source not in COMPUTE_SOURCES:
        raise SpecError("compute", f"must be one of {', '.join(COMPUTE_SOURCES)}, got {source!r}")
    if tables is not None and source != "roofline":
        return TableCost(tables)
    if source == "roofline" or (source == "auto" and has_datasheet(gpu)):
        if not has_datasheet(gpu):
            raise SpecError("compute", f"{gpu.name} has no bf16_tflops / hbm_gbps for a roofline")
        return RooflineCost(gpu, model, cost)
    if profile is None:
        raise SpecError("compute", f"no profile for {gpu.name} to derive per-layer times from")
    if num_layers > profile.max_layers:
        raise SpecError(
            "layers",
            f"{num_layers} layers, but the profile of {gpu.name} holds at most "
            f"{profile.max_layers}",
        )
    floor_ms = profile.decode_layer_ms or 0.0
    return TokenRateCost(profile.tokens_per_s[num_layers - 1], num_layers, floor_ms / 1e3)


def kv_capacity_entries(gpu: GpuSpec, model: ModelSpec, cost: CostModel, num_layers: int) -> int:
    """Token-layer KV entries left beside `num_layers` layers of weights (0 when none)."""
    free = gpu.memory_gb * 1e9 * cost.memory_utilization - num_layers * model.layer_bytes
    return max(0, int(free // model.kv_bytes_per_token_layer))
