"""`helix bench`: stream a synthetic workload at an OpenAI-compatible server and report
vLLM-style serving metrics. The I/O half; datasets and statistics live in helix/bench.py.

In -> Out: flags -> `BenchConfig` + `SampleRequest`s -> `run_benchmark` (aiohttp, SSE) ->
`RequestResult`s -> `summarize` -> a rich report, `--json`, or `--save-result FILE`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helix.bench import (
    DATASETS,
    BenchSummary,
    RequestResult,
    SampleRequest,
    arrival_intervals,
    dataset_stats,
    make_dataset,
    parse_goodput,
    summarize,
)

ENDPOINTS = ("/v1/completions", "/v1/chat/completions")


@dataclass(frozen=True)
class BenchConfig:
    """Where and how to send the requests."""

    base_url: str
    """Server root, e.g. http://127.0.0.1:8000 (a trailing /v1 is dropped)."""
    model: str
    endpoint: str = "/v1/completions"
    request_rate: float = math.inf
    """Requests per second of a Poisson arrival process; inf sends everything at once."""
    max_concurrency: int | None = None
    api_key: str | None = None
    seed: int = 0
    timeout_s: float = 6 * 3600.0

    def __post_init__(self) -> None:
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {ENDPOINTS}, got {self.endpoint!r}")
        if not self.request_rate > 0:
            raise ValueError(f"request_rate must be > 0 (or inf), got {self.request_rate}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")

    @property
    def is_chat(self) -> bool:
        return self.endpoint == "/v1/chat/completions"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def normalize_base_url(url: str) -> str:
    """`http://h:8000/v1/` -> `http://h:8000`; a bare `h:8000` gets `http://`."""
    url = url.strip().rstrip("/").removesuffix("/v1")
    return url if "://" in url else f"http://{url}"


def build_payload(config: BenchConfig, request: SampleRequest) -> dict[str, Any]:
    """The JSON body of one streamed request; ignore_eos pins the output length."""
    payload: dict[str, Any] = {
        "model": config.model,
        "max_tokens": request.output_len,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    if config.is_chat:
        payload["messages"] = request.as_messages()
    else:
        payload["prompt"] = request.as_prompt()
    return payload


def chunk_text(chunk: dict[str, Any]) -> str:
    """Generated text in one stream chunk (completions `text` or chat `delta.content`)."""
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    text = choice.get("text")
    if text is None:
        text = (choice.get("delta") or {}).get("content")
    return text or ""


def _error_message(body: str) -> str:
    """The message of an OpenAI error envelope, else the start of the body."""
    try:
        error = json.loads(body).get("error", {})
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = None
    return str(message or body.strip()[:200] or "empty body")


async def send_request(session: Any, config: BenchConfig, request: SampleRequest) -> RequestResult:
    """Stream one request; any HTTP error or broken stream becomes a failed result."""
    import aiohttp

    result = RequestResult(prompt_len=request.prompt_len)
    num_chunks = usage_tokens = 0
    is_done = False
    start = last = time.perf_counter()
    url = config.base_url + config.endpoint
    try:
        payload = build_payload(config, request)
        async with session.post(url, json=payload, headers=config.headers) as response:
            if response.status != 200:
                result.error = f"HTTP {response.status}: {_error_message(await response.text())}"
                return result
            async for raw in response.content:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue  # blank separators, comments and `event:` lines
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    is_done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    result.error = f"stream error: {_error_message(data)}"
                    return result
                now = time.perf_counter()
                if chunk_text(chunk):
                    if num_chunks == 0:
                        result.ttft_s = now - start
                    else:
                        result.itl_s.append(now - last)
                    last = now
                    num_chunks += 1
                usage = chunk.get("usage") or {}
                usage_tokens = int(usage.get("completion_tokens") or usage_tokens)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        return result
    if not is_done:
        result.error = "stream ended before data: [DONE]"
    elif num_chunks == 0:
        result.error = "stream carried no text"
    else:
        result.latency_s = time.perf_counter() - start
        result.output_len = usage_tokens or num_chunks
        result.is_success = True
    return result


@dataclass(frozen=True)
class BenchRun:
    results: list[RequestResult]
    duration_s: float


async def run_benchmark(
    config: BenchConfig,
    requests: Sequence[SampleRequest],
    on_result: Callable[[RequestResult], None] | None = None,
) -> BenchRun:
    """Send `requests` with Poisson (or instant) arrivals, at most `max_concurrency` in flight."""
    import aiohttp

    gaps = arrival_intervals(len(requests), config.request_rate, config.seed)
    limit = asyncio.Semaphore(config.max_concurrency or len(requests) or 1)
    timeout = aiohttp.ClientTimeout(total=config.timeout_s)
    # NOTE(bench): limit=0 lifts aiohttp's 100-connection pool cap; the semaphore bounds load.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def one(request: SampleRequest) -> RequestResult:
            async with limit:
                result = await send_request(session, config, request)
            if on_result is not None:
                on_result(result)
            return result

        start = time.perf_counter()
        tasks = []
        for request, gap in zip(requests, gaps):
            if gap > 0:
                await asyncio.sleep(gap)
            tasks.append(asyncio.create_task(one(request)))
        results = await asyncio.gather(*tasks)
        duration_s = time.perf_counter() - start
    return BenchRun(list(results), duration_s)


async def fetch_models(
    base_url: str, api_key: str | None = None, timeout_s: float = 10.0
) -> list[str]:
    """Model ids served at `base_url` (GET /v1/models); ValueError if it cannot be reached."""
    import aiohttp

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{base_url}/v1/models", headers=headers) as response,
        ):
            body = await response.text()
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}: {_error_message(body)}")
            return [str(entry["id"]) for entry in json.loads(body).get("data", [])]
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, KeyError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None


def render_report(summary: BenchSummary, header: dict[str, Any]) -> Any:
    """A rich renderable of the report: totals, throughputs, then latency percentiles."""
    from rich.console import Group
    from rich.table import Table

    totals = Table(title="serving benchmark", show_header=False, box=None, padding=(0, 2))
    totals.add_column(style="bold")
    totals.add_column(justify="right")
    rows = [
        *(
            (key.replace("_", " "), "-" if value is None else str(value))
            for key, value in header.items()
        ),
        ("successful requests", f"{summary.completed}"),
        ("failed requests", f"{summary.failed}"),
        ("benchmark duration (s)", f"{summary.duration_s:.2f}"),
        ("total input tokens", f"{summary.total_input}"),
        ("total generated tokens", f"{summary.total_output}"),
        ("request throughput (req/s)", f"{summary.request_throughput:.2f}"),
        ("output token throughput (tok/s)", f"{summary.output_throughput:.2f}"),
        ("total token throughput (tok/s)", f"{summary.total_token_throughput:.2f}"),
    ]
    if summary.request_goodput is not None:
        slos = " ".join(f"{k}:{v:g}" for k, v in summary.goodput_slos_ms.items())
        rows.append((f"request goodput (req/s, {slos} ms)", f"{summary.request_goodput:.2f}"))
    for key, value in rows:
        totals.add_row(key, value)
    latency = Table(title="latency (ms)")
    for column in ("metric", "mean", "median", "p99"):
        latency.add_column(column, justify="right" if column != "metric" else "left")
    for name, stats in (
        ("TTFT", summary.ttft),
        ("TPOT", summary.tpot),
        ("ITL", summary.itl),
        ("E2EL", summary.e2el),
    ):
        latency.add_row(
            name, f"{stats.mean_ms:.2f}", f"{stats.median_ms:.2f}", f"{stats.p99_ms:.2f}"
        )
    parts: list[Any] = [totals, latency]
    if summary.errors:
        errors = Table(title="errors", style="red")
        errors.add_column("requests", justify="right")
        errors.add_column("error")
        for message, count in sorted(summary.errors.items(), key=lambda kv: -kv[1]):
            errors.add_row(str(count), message)
        parts.append(errors)
    return Group(*parts)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "bench",
        help="benchmark a running OpenAI-compatible server (like `vllm bench serve`)",
        description="Stream a synthetic workload at URL and report TTFT, TPOT, ITL, E2EL, "
        "throughput and goodput. Datasets are generated locally; lengths are in words, "
        "each about one token.",
    )
    p.add_argument("--url", required=True, help="server root, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", default=None, help="model name (default: first of /v1/models)")
    p.add_argument("--endpoint", default="/v1/completions", choices=ENDPOINTS)
    p.add_argument("--dataset", default="random", choices=DATASETS)
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument(
        "--request-rate",
        type=float,
        default=math.inf,
        metavar="R",
        help="Poisson arrivals at R req/s; inf (default) sends all at once",
    )
    p.add_argument("--max-concurrency", type=int, default=None, metavar="N")
    p.add_argument("--random-input-len", type=int, default=128)
    p.add_argument("--random-output-len", type=int, default=64)
    p.add_argument("--random-prefix-len", type=int, default=0)
    p.add_argument("--random-range-ratio", type=float, default=0.0)
    p.add_argument("--prefix-groups", type=int, default=8, help="shared-prefix: system prompts")
    p.add_argument("--shared-prefix-len", type=int, default=512, help="shared-prefix: words")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--goodput", nargs="+", default=[], metavar="KEY:MS", help="ttft/tpot/e2el SLOs")
    p.add_argument("--api-key", default=None)
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--save-result", metavar="FILE", help="write summary and per-request data")
    p.set_defaults(func=cmd)


def cmd(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    err = Console(stderr=True)
    slos = parse_goodput(args.goodput)
    base_url = normalize_base_url(args.url)
    requests = make_dataset(
        args.dataset,
        args.num_prompts,
        input_len=args.random_input_len,
        output_len=args.random_output_len,
        prefix_len=args.random_prefix_len,
        range_ratio=args.random_range_ratio,
        num_groups=args.prefix_groups,
        shared_prefix_len=args.shared_prefix_len,
        seed=args.seed,
    )
    config = BenchConfig(
        base_url,
        args.model or "",
        args.endpoint,
        args.request_rate,
        args.max_concurrency,
        args.api_key,
        args.seed,
    )
    if not config.model:
        try:
            models = asyncio.run(fetch_models(base_url, args.api_key))
        except ValueError as exc:
            err.print(f"[red]server at {base_url} is not responding: {exc}[/red]")
            return 1
        if not models:
            err.print(f"[red]{base_url}/v1/models lists no model; pass --model[/red]")
            return 1
        config = dataclasses.replace(config, model=models[0])
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("requests", total=len(requests))
        num_failed = 0

        def on_result(result: RequestResult) -> None:
            nonlocal num_failed
            num_failed += not result.is_success
            label = f"requests ([red]{num_failed} failed[/red])" if num_failed else "requests"
            progress.update(task, advance=1, description=label)

        run = asyncio.run(run_benchmark(config, requests, on_result))
    summary = summarize(run.results, run.duration_s, slos)
    header: dict[str, Any] = {
        "url": base_url + args.endpoint,
        "model": config.model,
        "dataset": args.dataset,
        "num_prompts": len(requests),
        "seed": args.seed,
        "request_rate": args.request_rate if math.isfinite(args.request_rate) else "inf",
        "max_concurrency": args.max_concurrency,
        **{k: round(v, 1) for k, v in dataset_stats(requests).items()},
    }
    if args.json:
        print(json.dumps({**header, **summary.to_dict()}, indent=2))
    else:
        Console().print(render_report(summary, header))
    if args.save_result:
        _save_result(Path(args.save_result), header, summary, run)
    return 0


def _save_result(path: Path, header: dict[str, Any], summary: BenchSummary, run: BenchRun) -> None:
    record = {
        **header,
        **summary.to_dict(),
        "input_lens": [r.prompt_len for r in run.results],
        "output_lens": [r.output_len for r in run.results],
        "ttfts_s": [r.ttft_s for r in run.results],
        "itls_s": [r.itl_s for r in run.results],
        "errors_per_request": [r.error for r in run.results],
    }
    try:
        path.write_text(json.dumps(record, indent=2) + "\n")
    except OSError as exc:
        raise ValueError(f"--save-result: cannot write {path}: {exc.strerror}") from None
