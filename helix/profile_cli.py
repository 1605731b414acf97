"""`helix profile`: time per-layer prompt and decode work here, write a cluster `profiles` entry.

    helix profile smollm2-135m --device cpu --batch-tokens 1 8 32 128 512 -o cpu.yaml

The file holds one GPU kind named after the device, ready to paste under a cluster's `profiles:`:

    cpu:
      schema_version: 1
      model: smollm2-135m
      dtype: float32
      max_layers: 30
      tokens_per_s: [T(1), ..., T(30)]
      decode_layer_ms: 0.41
      threads: 2
      statistic: median
      prompt_layer_ms_by_tokens: {1: 0.3, 8: 0.5, ...}
      decode_layer_ms_by_batch: {1: 0.3, 8: 0.41, ...}
      head_ms_by_batch: {1: 2.1, 8: 3.0, ...}
      prompt_pass_ms_by_tokens: {1: 0.4, 8: 0.5, ...}
      decode_pass_ms_by_batch: {1: 0.4, 8: 0.9, ...}

`head_ms_by_batch` is what the last stage of a pipeline adds per pass: final norm, LM head and
greedy sampling of N sequences (the simulator charges it to the node holding the last layer).
`prompt_pass_ms_by_tokens` / `decode_pass_ms_by_batch` are what every node of the sharded runtime
spends per pass beside its layers: the ZeroMQ message in and out, its codec, batch set-up and KV
bookkeeping, timed through the node's own code (`--no-pass-times` skips them; a profile without
them counts them as 0).
`threads` is the torch thread count the times were taken with (`--threads`; a local node started
by LocalCluster gets cores // nodes threads, so profile with that). `co_runners` (`--co-runners
K`) says K other processes ran decode passes of the same stage size and threads meanwhile: the
other K nodes of a local cluster sharing this machine's cores, cache and memory bandwidth (the
times are then those of a node whose neighbours are all busy). `statistic` says which of the
repeated runs each time is: the median (default; what a node serving back to back sees) or the
fastest (`--statistic min`).

On a CPU, time stages as large as your nodes' (`--layers 15`): stages of 1-4 layers keep their
weights in the last-level cache and read 10-25 % fast per layer (SmolLM2 on a 32 MB L3).

T(k) uses the cost model's accounting (a 750-token prompt and 240 decode steps per request) with
the measured tables, decode batched at the largest measured batch: T(k) = T(1) / k, since KV room
is not measured. `decode_layer_ms` is the decode time at that batch.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from helix.planner.sim_compute import LayerTables
    from helix.planner.spec import Profile
    from helix.runtime.profiler import LayerTimings

SCHEMA_VERSION = 1
META_KEYS = ("schema_version", "model", "dtype")
"""Keys of a measured entry that describe the measurement rather than the GPU."""


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "profile",
        help="measure per-layer prompt/decode times on this machine (a cluster profile entry)",
        description="Time the engine's decoder layers on this machine for prompt batches of N "
        "tokens and decode batches of N sequences, and write them as a cluster `profiles` "
        "entry for a GPU kind named after the device.",
    )
    p.add_argument(
        "model", nargs="?", default="smollm2-135m", help="built-in name, HF folder or GGUF file"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--batch-tokens", type=int, nargs="+", default=[1, 8, 32, 128, 512], metavar="N")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="default float32 on cpu, bfloat16 on cuda",
    )
    p.add_argument(
        "--context",
        type=int,
        default=128,
        metavar="TOKENS",
        help="cached tokens per decoding sequence (default 128)",
    )
    p.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=[1, 2, 4],
        metavar="K",
        help="stage sizes [0, K) to time; the per-layer time is the slope (one K: time / K)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    p.add_argument(
        "--prompt-len",
        type=int,
        default=512,
        metavar="TOKENS",
        help="a prompt batch is made of prompts this long (default 512)",
    )
    p.add_argument(
        "--decode-batches",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="decode batch sizes, when not those of --batch-tokens",
    )
    p.add_argument(
        "--statistic",
        default="median",
        choices=["median", "min"],
        help="median (default) or fastest of the repeated runs",
    )
    p.add_argument(
        "--co-runners",
        type=int,
        default=0,
        metavar="K",
        help="time while K other processes run decode passes of the same stage size and threads "
        "(the other nodes of a local cluster on this machine; default 0)",
    )
    p.add_argument(
        "--no-pass-times",
        dest="pass_times",
        action="store_false",
        help="do not time a node's per-pass work beside its layers (messages, batch set-up)",
    )
    p.add_argument("--kind", default=None, help="GPU kind to file it under (default: device name)")
    p.add_argument(
        "--min-time",
        type=float,
        default=0.2,
        metavar="S",
        help="time each case for at least S seconds (default 0.2)",
    )
    p.add_argument("-o", "--output", metavar="PROFILE.yaml", help="write here (default: stdout)")
    p.set_defaults(func=cmd)


def cmd(args: argparse.Namespace) -> int:
    import yaml

    from helix.runtime.profiler import measure_layer_times

    dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    timings = measure_layer_times(
        args.model,
        device=args.device,
        dtype=dtype,
        batch_tokens=args.batch_tokens,
        context_tokens=args.context,
        layer_counts=args.layers,
        min_time_s=args.min_time,
        threads=args.threads,
        prompt_seq_tokens=args.prompt_len,
        decode_batches=args.decode_batches,
        statistic=args.statistic,
        passes=args.pass_times,
        co_runners=args.co_runners,
    )
    kind = args.kind or timings.kind
    text = yaml.safe_dump({kind: profile_entry(timings)}, sort_keys=False)
    if args.output:
        Path(args.output).write_text(text)
        _print_table(kind, timings, args.output)
    else:
        print(text, end="")
    return 0


def profile_entry(timings: LayerTimings, max_layers: int | None = None) -> dict[str, Any]:
    """The YAML mapping of one measured GPU kind (see the module docstring)."""
    from helix.planner.profile import DEFAULT_COST_MODEL as cost
    from helix.planner.sim_compute import LayerTables, TableCost, typical_tokens_per_s

    tables = LayerTables(
        tuple(sorted(timings.prompt_layer_ms.items())),
        tuple(sorted(timings.decode_layer_ms.items())),
    )
    batch = max(timings.decode_layer_ms)
    layer_cost = TableCost(tables)
    layers = max_layers or timings.num_layers
    tokens = [
        round(typical_tokens_per_s(layer_cost, k, batch, cost.prompt_tokens, cost.decode_tokens), 3)
        for k in range(1, layers + 1)
    ]
    entry: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "model": timings.model,
        "dtype": timings.dtype,
        "max_layers": layers,
        "tokens_per_s": tokens,
        "decode_layer_ms": round(layer_cost.decode_s(batch, 0) * 1e3, 6),
    }
    if timings.threads is not None:
        entry["threads"] = timings.threads
    if timings.co_runners:
        entry["co_runners"] = timings.co_runners
    entry["statistic"] = timings.statistic
    entry["prompt_layer_ms_by_tokens"] = dict(sorted(timings.prompt_layer_ms.items()))
    entry["decode_layer_ms_by_batch"] = dict(sorted(timings.decode_layer_ms.items()))
    if timings.head_ms:
        entry["head_ms_by_batch"] = dict(sorted(timings.head_ms.items()))
    if timings.prompt_pass_ms and timings.decode_pass_ms:
        entry["prompt_pass_ms_by_tokens"] = dict(sorted(timings.prompt_pass_ms.items()))
        entry["decode_pass_ms_by_batch"] = dict(sorted(timings.decode_pass_ms.items()))
    return entry


def load_profile(path: str | Path) -> dict[str, tuple[Profile, LayerTables, dict[str, Any]]]:
    """Read a `helix profile` file: {kind: (Profile, LayerTables, {schema_version, model,
    dtype})}. Raises SpecError naming the field."""
    import yaml

    from helix.planner.sim_compute import TABLE_KEYS, parse_layer_tables
    from helix.planner.spec import SpecError

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise SpecError("", f"cannot read profile {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SpecError("", f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise SpecError("", f"{path}: expected a mapping {{GPU kind: profile}}")
    out: dict[str, tuple[Profile, LayerTables, dict[str, Any]]] = {}
    for kind, entry in data.items():
        if not isinstance(entry, dict):
            raise SpecError(str(kind), "must be a mapping")
        version = entry.get("schema_version")
        if version != SCHEMA_VERSION:
            raise SpecError(f"{kind}.schema_version", f"expected {SCHEMA_VERSION}, got {version!r}")
        tables = parse_layer_tables(entry, str(kind))
        if tables is None:
            raise SpecError(f"{kind}.{TABLE_KEYS[0]}", "missing")
        profile = _profile(entry, str(kind))
        out[str(kind)] = (profile, tables, {k: entry.get(k) for k in META_KEYS})
    return out


def _profile(entry: dict[str, Any], kind: str) -> Profile:
    from helix.planner.spec import Profile, SpecError

    values = entry.get("tokens_per_s")
    if not isinstance(values, list) or not values:
        raise SpecError(f"{kind}.tokens_per_s", "must be a non-empty list [T(1), ..., T(max)]")
    decode = entry.get("decode_layer_ms")
    try:
        tokens = tuple(float(v) for v in values)
        decode_ms = None if decode is None else float(decode)
        max_layers = int(entry.get("max_layers", len(tokens)))
    except (TypeError, ValueError):
        raise SpecError(
            kind, "max_layers, tokens_per_s and decode_layer_ms must be numbers"
        ) from None
    try:
        return Profile(max_layers, tokens, decode_ms)
    except SpecError as exc:
        raise SpecError(f"{kind}.{exc.path}", exc.message) from None


def _print_table(kind: str, timings: LayerTimings, path: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{timings.model} ({timings.dtype}) on {kind}: ms per layer, "
        f"stages of {list(timings.layer_counts)} layers timed"
    )
    table.add_column("N", justify="right")
    table.add_column("prompt of N tokens", justify="right")
    table.add_column(f"decode of N seqs (context {timings.context_tokens})", justify="right")
    head = timings.head_ms or {}
    table.add_column("LM head + sampling of N seqs (ms)", justify="right")
    passes = (timings.prompt_pass_ms or {}, timings.decode_pass_ms or {})
    table.add_column("node pass of N prompt tokens (ms)", justify="right")
    table.add_column("node pass of N decode seqs (ms)", justify="right")
    prompt, decode = timings.prompt_layer_ms, timings.decode_layer_ms
    for n in sorted(set(prompt) | set(decode)):
        cells = [f"{t[n]:.4f}" if n in t else "-" for t in (prompt, decode, head, *passes)]
        table.add_row(str(n), *cells)
    console = Console()
    console.print(table)
    console.print(f"profile written to {path}")
