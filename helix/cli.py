"""`helix` command line: flags -> config and calls; no business logic here."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .planner.solvers import Progress


def _add_plan(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from helix.planner.solvers import solver_names

    p = sub.add_parser(
        "plan",
        help="place a model's layers on a heterogeneous cluster (max flow)",
        description="Assign contiguous layer ranges to the nodes of CLUSTER so that "
        "the max flow (tokens/s) through the cluster is as high as possible.",
    )
    p.add_argument(
        "cluster",
        nargs="?",
        default=None,
        help="cluster YAML, or the name of a bundled example (default: helix-single24)",
    )
    p.add_argument("--solver", default="milp", choices=solver_names())
    p.add_argument(
        "--time-limit",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds the search may take (default 60)",
    )
    p.add_argument(
        "--partial-inference",
        action="store_true",
        help="allow i -> j when start_j <= end_i < end_j",
    )
    p.add_argument(
        "--max-hops",
        type=int,
        default=None,
        metavar="N",
        help="at most N nodes on any request's route",
    )
    p.add_argument(
        "--pareto",
        action="store_true",
        help="print the throughput / hops frontier instead of one plan",
    )
    p.add_argument(
        "--simulate",
        action="store_true",
        help="with --pareto: simulate each point (offline, max-flow routing, 600 s) and keep "
        "the one with the most decode tokens/s (written by -o)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for randomised baselines (petals)")
    p.add_argument("-o", "--output", metavar="PLAN.yaml", help="write the plan as YAML")
    p.add_argument("--png", metavar="PLAN.png", help="draw the placement")
    p.add_argument("--json", action="store_true", help="print the plan as JSON on stdout")
    p.set_defaults(func=_cmd_plan)


def bundled_cluster(name: str) -> Path | None:
    """A cluster YAML shipped with the package (clusters/NAME.yaml), or None."""
    from importlib.resources import files

    try:
        candidate = files("helix.clusters").joinpath(f"{name.removesuffix('.yaml')}.yaml")
    except ModuleNotFoundError:
        return None
    return Path(str(candidate)) if candidate.is_file() else None


def _resolve_cluster(value: str | None) -> Path:
    from helix.planner.spec import SpecError

    if value is None:
        value = "helix-single24"
    path = Path(value)
    if path.exists():
        return path
    bundled = bundled_cluster(value)
    if bundled is not None:
        return bundled
    raise SpecError("cluster", f"no such file {value!r} and no bundled cluster of that name")


def _cmd_plan(args: argparse.Namespace) -> int:
    from rich.console import Console

    from helix.config import load_cluster
    from helix.planning import plan
    from helix.report import draw_plan, plan_summary, plan_table, save_plan

    out = Console()
    err = Console(stderr=True)
    if args.time_limit <= 0:
        raise ValueError(f"--time-limit must be > 0, got {args.time_limit}")
    if args.max_hops is not None and args.max_hops < 1:
        raise ValueError(f"--max-hops must be >= 1, got {args.max_hops}")
    if args.simulate and not args.pareto:
        raise ValueError("--simulate goes with --pareto (it picks a point of the frontier)")
    cluster = load_cluster(_resolve_cluster(args.cluster))
    if args.pareto:
        return _cmd_pareto(args, cluster, out, err)
    with _progress(err, enabled=not args.json) as progress:
        result = plan(
            cluster,
            args.solver,
            time_limit_s=args.time_limit,
            partial_inference=args.partial_inference,
            max_hops=args.max_hops,
            seed=args.seed,
            progress=progress,
        )
    if args.output:
        save_plan(result, args.output)
    if args.png:
        draw_plan(result, args.png)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    out.print(plan_table(result))
    out.print(plan_summary(result))
    for label, path in (("plan", args.output), ("drawing", args.png)):
        if path:
            out.print(f"{label} written to {path}")
    return 0


def _cmd_pareto(args: argparse.Namespace, cluster: Any, out: Any, err: Any) -> int:
    """The throughput/hops frontier; with --simulate, each point simulated and the best kept."""
    from helix.planning import pareto, simulated_decode
    from helix.report import draw_plan, save_plan

    with _progress(err, enabled=not args.json) as progress:
        frontier = pareto(
            cluster,
            time_limit_s=args.time_limit,
            partial_inference=args.partial_inference,
            progress=progress,
        )
    if not args.simulate:
        return _print_pareto(frontier, out, args.json)
    decode = simulated_decode(cluster, frontier)
    best = max(range(len(frontier)), key=lambda i: decode[i])
    if args.output:
        save_plan(frontier[best], args.output)
    if args.png:
        draw_plan(frontier[best], args.png)
    code = _print_pareto(frontier, out, args.json, decode, best)
    if args.output and not args.json:
        out.print(f"the {frontier[best].stats.hops_max}-hop plan written to {args.output}")
    return code


def _print_pareto(
    frontier: list[Any],
    out: Any,
    as_json: bool,
    decode: list[float] | None = None,
    best: int | None = None,
) -> int:
    from rich.table import Table

    rows: list[dict[str, Any]] = [
        {
            "hops_max": p.stats.hops_max,
            "throughput_tokens_per_s": round(p.throughput_tokens_per_s, 3),
            "upper_bound_tokens_per_s": round(p.upper_bound_tokens_per_s, 3),
            "latency_ms_mean": round(p.stats.latency_ms_mean, 2),
            "status": p.solver.status,
        }
        for p in frontier
    ]
    if decode is not None:
        for i, row in enumerate(rows):
            row["simulated_decode_tokens_per_s"] = round(decode[i], 3)
            row["best_simulated"] = i == best
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="throughput / hops frontier")
    columns = ["hops (max)", "throughput tok/s", "bound tok/s", "latency ms (mean)", "status"]
    if decode is not None:
        columns.append("simulated decode tok/s")
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        cells = [
            str(row["hops_max"]),
            f"{row['throughput_tokens_per_s']:,.1f}",
            f"{row['upper_bound_tokens_per_s']:,.1f}",
            f"{row['latency_ms_mean']:.1f}",
            str(row["status"]),
        ]
        if decode is not None:
            mark = " *" if row["best_simulated"] else ""
            cells.append(f"{row['simulated_decode_tokens_per_s']:,.1f}{mark}")
        table.add_row(*cells)
    out.print(table)
    return 0


class _progress:
    """Live incumbent/bound line on stderr while a solver runs (a rich Status)."""

    def __init__(self, console: Any, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled and getattr(console, "is_terminal", False)
        self.status: Any = None

    def __enter__(self) -> Callable[[Progress], None] | None:
        if not self.enabled:
            return None
        self.status = self.console.status("planning...")
        self.status.__enter__()
        return self.update

    def update(self, p: Progress) -> None:
        self.status.update(
            f"planning: {p.seconds:5.1f} s | incumbent {p.incumbent_tokens_per_s:,.2f} tok/s | "
            f"bound {p.bound_tokens_per_s:,.2f} | {p.message}"
        )

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.__exit__(*exc)


def _add_generate(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "generate",
        help="generate text with one engine node (offline)",
        description="Complete PROMPT (or every line of --prompts-file) with MODEL "
        "(default: the built-in smollm2-135m).",
    )
    p.add_argument(
        "model", nargs="?", default=None, help="built-in name, HF checkpoint folder or GGUF file"
    )
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts-file", help="a file with one prompt per line")
    p.add_argument("--chat", action="store_true", help="apply the model's chat template")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None, help="per-request sampling seed")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument(
        "--attention-backend", default="auto", choices=["auto", "torch", "triton", "pallas"]
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs for decode steps")
    p.add_argument("--max-model-len", type=int, default=None)
    p.set_defaults(func=_cmd_generate)


def _cmd_generate(args: argparse.Namespace) -> int:
    from helix.llm import LLM
    from helix.runtime.sampling_params import SamplingParams

    prompts = list(args.prompt)
    if args.prompts_file:
        try:
            lines = Path(args.prompts_file).read_text().splitlines()
        except OSError as exc:
            raise ValueError(
                f"--prompts-file: cannot read {args.prompts_file}: {exc.strerror}"
            ) from None
        prompts += [line for line in lines if line.strip()]
    if not prompts:
        raise ValueError("give --prompt TEXT or --prompts-file FILE")
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
    )
    llm = LLM(
        args.model,
        dtype=args.dtype,
        attention_backend=args.attention_backend,
        device=args.device,
        enforce_eager=args.enforce_eager,
        max_model_len=args.max_model_len,
    )
    many = len(prompts) > 1
    if args.chat:
        outputs = [llm.chat([{"role": "user", "content": p}], params)[0] for p in prompts]
    else:
        outputs = llm.generate(prompts, params, use_tqdm=many)
    for prompt, output in zip(prompts, outputs):
        text = output.outputs[0].text
        print(f"> {prompt}\n{text}\n" if many else text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="helix",
        description="helix-serve: LLM serving over "
        "heterogeneous GPU clusters with max-flow placement",
    )
    parser.add_argument("--version", action="version", version="helix-serve 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_plan(sub)
    _add_generate(sub)
    from helix import (
        bench_cli,
        manifests,
        node_cli,
        profile_cli,
        serve_cli,
        simulate_cli,
        top_cli,
    )

    for module in (serve_cli, node_cli, manifests, bench_cli, top_cli, simulate_cli, profile_cli):
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from helix.planner.spec import SpecError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
