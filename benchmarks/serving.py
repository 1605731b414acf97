"""Serving benchmark: helix-serve against an HF transformers static-batching server.

    python benchmarks/serving.py [--num-prompts 64] [--request-rate 4] [--input-len 64]
        [--output-len 64] [--max-batch-size 32] [--hf-stream step|batch] [--json]

Starts `helix serve MODEL` (one process, continuous batching) and then
benchmarks/hf_static_server.py (one `model.generate` per static batch) on the same model, dtype
and port kind, one after the other (never both at once), and streams the same seeded Poisson
workload at each with the `helix bench` client (helix/bench_cli.py; ignore_eos, so every request
generates exactly --output-len tokens). Both hold at most --max-batch-size sequences in a batch
(helix: --max-num-seqs). Each server first answers a few warm-up requests that are not counted.

Prints one row per server (request and output token throughput, TTFT mean/p50/p99, TPOT mean,
E2E latency p99) and the ratios helix / HF of request throughput (higher is better) and of
p99 TTFT (lower is better). Server logs go to a temporary folder named on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from helix.bench import BenchSummary, make_dataset, summarize
from helix.bench_cli import BenchConfig, run_benchmark

HERE = Path(__file__).resolve().parent
SERVED_NAME = "bench-model"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def launched(
    name: str, command: list[str], port: int, log: Path, timeout_s: float, threads: int | None
) -> Iterator[str]:
    """Run a server process until /health answers; yields its base URL, stops it afterwards."""
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads in both servers
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                tail = log.read_text()[-2000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not healthy after {timeout_s:.0f}s; see {log}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def bench_one(url: str, args: argparse.Namespace) -> BenchSummary:
    """Warm up with a few unmeasured requests, then run the measured workload."""
    common = dict(input_len=args.input_len, output_len=args.output_len)
    warmup = make_dataset("random", args.warmup, seed=args.seed + 1, **common)
    requests = make_dataset("random", args.num_prompts, seed=args.seed, **common)
    asyncio.run(run_benchmark(BenchConfig(url, SERVED_NAME), warmup))
    config = BenchConfig(url, SERVED_NAME, request_rate=args.request_rate, seed=args.seed)
    run = asyncio.run(run_benchmark(config, requests))
    return summarize(run.results, run.duration_s)


def commands(args: argparse.Namespace, port: int) -> dict[str, list[str]]:
    size = str(args.max_batch_size)
    helix = [sys.executable, "-m", "helix.cli", "serve", args.model, "--port", str(port),
             "--served-model-name", SERVED_NAME, "--dtype", args.dtype, "--max-num-seqs", size,
             "--uvicorn-log-level", "warning"]  # fmt: skip
    hf = [sys.executable, str(HERE / "hf_static_server.py"), args.model, "--port", str(port),
          "--served-model-name", SERVED_NAME, "--dtype", args.dtype, "--max-batch-size", size,
          "--stream", args.hf_stream]  # fmt: skip
    return {"helix": helix, "hf-static": hf}


def row(name: str, s: BenchSummary) -> str:
    cells = [
        f"{s.request_throughput:6.3f}",
        f"{s.output_throughput:8.1f}",
        f"{s.ttft.mean_ms:9.0f}",
        f"{s.ttft.median_ms:9.0f}",
        f"{s.ttft.p99_ms:9.0f}",
        f"{s.tpot.mean_ms:8.1f}",
        f"{s.e2el.p99_ms:9.0f}",
        f"{s.completed:4d}/{s.completed + s.failed}",
    ]
    return f"{name:10s} " + " ".join(cells)


HEADER = (
    f"{'server':10s} {'req/s':>6s} {'out tok/s':>8s} {'TTFT mean':>9s} {'TTFT p50':>9s} "
    f"{'TTFT p99':>9s} {'TPOT ms':>8s} {'E2E p99':>9s} {'ok':>6s}"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="built-in name, HF folder, .gguf")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--request-rate", type=float, default=4.0, help="Poisson req/s")
    parser.add_argument("--input-len", type=int, default=64, help="prompt words (~tokens)")
    parser.add_argument("--output-len", type=int, default=64, help="tokens per request")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--hf-stream", choices=("step", "batch"), default="step")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=4, help="unmeasured requests per server")
    parser.add_argument("--servers", nargs="+", default=["helix", "hf-static"],
                        choices=["helix", "hf-static"])  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads per server")
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="helix-serving-bench-"))
    rate = args.request_rate if math.isfinite(args.request_rate) else "inf"
    print(f"{args.model} {args.dtype}: {args.num_prompts} prompts of {args.input_len} words, "
          f"{args.output_len} output tokens, Poisson {rate} req/s, seed {args.seed}, "
          f"max batch {args.max_batch_size}, HF streams per {args.hf_stream}, "
          f"threads {args.threads or 'default'}; logs in {logs}",
          file=sys.stderr, flush=True)  # fmt: skip
    results: dict[str, BenchSummary] = {}
    for name in args.servers:
        port = free_port()
        start = time.perf_counter()
        command, log = commands(args, port)[name], logs / f"{name}.log"
        with launched(name, command, port, log, args.start_timeout, args.threads) as url:
            print(f"{name}: up after {time.perf_counter() - start:.0f}s, benchmarking",
                  file=sys.stderr, flush=True)  # fmt: skip
            results[name] = bench_one(url, args)
        expected = args.num_prompts * args.output_len
        if results[name].total_output != expected:
            print(f"warning: {name} generated {results[name].total_output} tokens, "
                  f"expected {expected}", file=sys.stderr)  # fmt: skip
    ratios: dict[str, float] = {}
    if {"helix", "hf-static"} <= results.keys():
        ours, hf = results["helix"], results["hf-static"]
        ratios["request_throughput"] = ours.request_throughput / max(hf.request_throughput, 1e-9)
        ratios["ttft_p99"] = ours.ttft.p99_ms / max(hf.ttft.p99_ms, 1e-9)
    if args.json:
        report: dict[str, Any] = {
            "config": {k: v for k, v in vars(args).items() if k != "json"} | {"request_rate": rate},
            "results": {name: s.to_dict() for name, s in results.items()},
            "helix_over_hf": ratios,
        }
        print(json.dumps(report, indent=2))
        return
    print(f"{HEADER}\n" + "\n".join(row(name, s) for name, s in results.items()))
    print("(latencies in ms; TPOT mean; E2E = end-to-end latency)")
    if ratios:
        print(f"helix / HF static: request throughput {ratios['request_throughput']:.2f}x "
              f"(higher is better), p99 TTFT {ratios['ttft_p99']:.2f}x "
              "(lower is better)")  # fmt: skip


if __name__ == "__main__":
    main()
