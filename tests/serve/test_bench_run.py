"""`helix bench` against a tiny fake OpenAI-compatible streaming server started in the test.

The server fails three requests on purpose (by arrival number, so the count is deterministic):
an HTTP 500 with an OpenAI error envelope, a stream that ends without `data: [DONE]`, and a
connection dropped mid-stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helix import bench_cli
from helix.bench import random_dataset, shared_prefix_dataset

web = pytest.importorskip("aiohttp.web")

MODEL = "fake-model"
FAIL_HTTP, FAIL_NO_DONE, FAIL_DROP = 3, 5, 7
CHUNK_DELAY_S = 0.002


class FakeServer:
    """An aiohttp app on 127.0.0.1, port 0, running its own event loop in a thread."""

    def __init__(self) -> None:
        self.num_requests = 0
        self.num_in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict[str, Any]] = []
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._stream)
        app.router.add_post("/v1/chat/completions", self._stream)
        self._runner = web.AppRunner(app)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> FakeServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def _models(self, request: Any) -> Any:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def _stream(self, request: Any) -> Any:
        body = await request.json()
        self.bodies.append(body)
        self.num_requests += 1
        number = self.num_requests
        if number == FAIL_HTTP:
            error = {"message": "fake overload", "type": "server_error", "param": None, "code": 500}
            return web.json_response({"error": error}, status=500)
        is_chat = request.path.endswith("/chat/completions")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self.num_in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.num_in_flight)
        try:
            if is_chat:
                await _send(response, {"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
            for i in range(body["max_tokens"]):
                if number == FAIL_DROP and i == 1:
                    request.transport.close()
                    return response
                await asyncio.sleep(CHUNK_DELAY_S)
                choice = {"delta": {"content": f" t{i}"}} if is_chat else {"text": f" t{i}"}
                await _send(response, {"choices": [{"index": 0, **choice}]})
                if number == FAIL_NO_DONE:
                    await response.write_eof()
                    return response
            usage = {"prompt_tokens": 1, "completion_tokens": body["max_tokens"]}
            await _send(response, {"choices": [], "usage": usage})
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        finally:
            self.num_in_flight -= 1


async def _send(response: Any, chunk: dict[str, Any]) -> None:
    await response.write(f"data: {json.dumps(chunk)}\n\n".encode())


def _closed_port_url() -> str:
    """A URL on which nothing listens: bind port 0, note the port, close the socket."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    with FakeServer() as fake:
        yield fake


@pytest.mark.parametrize("endpoint", bench_cli.ENDPOINTS)
def test_run_counts_successes_and_failures(fake_server: FakeServer, endpoint: str) -> None:
    requests = random_dataset(12, input_len=16, output_len=6, seed=1)
    config = bench_cli.BenchConfig(fake_server.url, MODEL, endpoint)
    run = asyncio.run(bench_cli.run_benchmark(config, requests))
    summary = bench_cli.summarize(run.results, run.duration_s)

    assert (summary.completed, summary.failed) == (9, 3)
    assert summary.total_output == 9 * 6
    assert summary.total_input == 9 * 16
    assert sum(summary.errors.values()) == 3
    messages = " | ".join(summary.errors)
    assert "HTTP 500: fake overload" in messages
    assert "stream ended before data: [DONE]" in messages
    ok = [r for r in run.results if r.is_success]
    assert all(r.ttft_s > 0 and len(r.itl_s) == 5 and r.output_len == 6 for r in ok)
    assert summary.tpot.mean_ms > 0 and summary.itl.median_ms > 0
    assert summary.e2el.mean_ms >= summary.ttft.mean_ms
    body = fake_server.bodies[0]
    assert body["stream"] is True and body["ignore_eos"] is True and body["max_tokens"] == 6
    assert ("messages" in body) == (endpoint == "/v1/chat/completions")


def test_max_concurrency_bounds_in_flight_requests(fake_server: FakeServer) -> None:
    requests = shared_prefix_dataset(10, 2, prefix_len=8, question_len=4, output_len=4)
    config = bench_cli.BenchConfig(fake_server.url, MODEL, max_concurrency=2, request_rate=500.0)
    run = asyncio.run(bench_cli.run_benchmark(config, requests))
    assert len(run.results) == 10
    assert 1 <= fake_server.max_in_flight <= 2


def test_unreachable_server_fails_every_request_without_raising() -> None:
    config = bench_cli.BenchConfig(_closed_port_url(), MODEL)
    run = asyncio.run(bench_cli.run_benchmark(config, random_dataset(3, 4, 2)))
    assert all(not r.is_success and r.error for r in run.results)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="helix")
    bench_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["bench", *argv])


def test_cli_json_and_save_result(
    fake_server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "result.json"
    argv = ["--url", fake_server.url + "/v1", "--num-prompts", "8", "--random-input-len", "8"]
    argv += ["--random-output-len", "4", "--goodput", "ttft:10000", "e2el:10000"]
    args = _parse([*argv, "--json", "--save-result", str(saved)])
    assert args.func(args) == 0

    report = json.loads(capsys.readouterr().out)
    assert report["model"] == MODEL
    assert (report["completed"], report["failed"]) == (5, 3)
    assert report["request_goodput"] == pytest.approx(report["request_throughput"])
    record = json.loads(saved.read_text())
    assert len(record["errors_per_request"]) == 8
    assert sum(bool(e) for e in record["errors_per_request"]) == 3


def test_cli_table_report_lists_errors(
    fake_server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _parse(["--url", fake_server.url, "--num-prompts", "4", "--dataset", "sharegpt"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    for text in ("successful requests", "failed requests", "TTFT", "TPOT", "ITL", "E2EL"):
        assert text in out
    assert "fake overload" in out


def test_cli_reports_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["--url", _closed_port_url(), "--num-prompts", "2"])
    assert args.func(args) == 1
    assert "is not responding" in capsys.readouterr().err
