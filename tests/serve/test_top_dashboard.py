"""`helix top`: parsing /metrics, derived rates and quantiles, and rendered frames."""

from __future__ import annotations

import argparse
import dataclasses
import http.server
import socket
import threading
from collections.abc import Iterator

import pytest
from rich.console import Console

from helix import top_cli
from helix.dashboard import (
    History,
    bucket_delta,
    counter_rate,
    histogram_quantile,
    parse_exposition,
    parse_metrics,
    render,
    sparkline,
)

M = 'model_name="llama-30b"'
CANNED = f"""\
# HELP helix:num_requests_running Requests in a batch.
# TYPE helix:num_requests_running gauge
helix:num_requests_running{{{M}}} 5.0
# TYPE helix:num_requests_waiting gauge
helix:num_requests_waiting{{{M}}} 2.0
# TYPE helix:kv_cache_usage_perc gauge
helix:kv_cache_usage_perc{{{M},node="a100-0",gpu_kind="A100"}} 0.42
helix:kv_cache_usage_perc{{{M},node="t4-1",gpu_kind="T4"}} 0.95
# TYPE helix:node_tokens_per_second gauge
helix:node_tokens_per_second{{{M},node="a100-0"}} 812.5
helix:node_tokens_per_second{{{M},node="t4-1"}} 240.0
# TYPE helix:node_info gauge
helix:node_info{{{M},node="t4-1",gpu_kind="T4",layer_start="40",layer_end="60"}} 1.0
helix:node_info{{{M},node="a100-0",gpu_kind="A100",layer_start="0",layer_end="40"}} 1.0
# TYPE helix:planned_flow_tokens_per_second gauge
helix:planned_flow_tokens_per_second{{{M},src="source",dst="a100-0"}} 600.0
helix:planned_flow_tokens_per_second{{{M},src="source",dst="t4-1"}} 200.0
# TYPE helix:prompt_tokens counter
helix:prompt_tokens_total{{{M}}} {{prompt}}
helix:prompt_tokens_created{{{M}}} 1.7e9
# TYPE helix:generation_tokens counter
helix:generation_tokens_total{{{M}}} {{generation}}
# TYPE helix:request_success counter
helix:request_success_total{{{M},finished_reason="length"}} 30.0
helix:request_success_total{{{M},finished_reason="stop"}} 10.0
# TYPE helix:num_preemptions counter
helix:num_preemptions_total{{{M}}} 3.0
# TYPE helix:prefix_cache_queries counter
helix:prefix_cache_queries_total{{{M}}} 1000.0
# TYPE helix:prefix_cache_hits counter
helix:prefix_cache_hits_total{{{M}}} 250.0
# TYPE helix:routed_requests counter
helix:routed_requests_total{{{M},src="source",dst="a100-0"}} {{routed_a}}
helix:routed_requests_total{{{M},src="source",dst="t4-1"}} {{routed_t}}
# TYPE helix:time_to_first_token_seconds histogram
helix:time_to_first_token_seconds_bucket{{{M},le="0.1"}} 10.0
helix:time_to_first_token_seconds_bucket{{{M},le="0.5"}} 30.0
helix:time_to_first_token_seconds_bucket{{{M},le="+Inf"}} 40.0
helix:time_to_first_token_seconds_sum{{{M}}} 9.0
helix:time_to_first_token_seconds_count{{{M}}} 40.0
# TYPE helix:e2e_request_latency_seconds histogram
helix:e2e_request_latency_seconds_bucket{{{M},le="1.0"}} 20.0
helix:e2e_request_latency_seconds_bucket{{{M},le="4.0"}} 40.0
helix:e2e_request_latency_seconds_bucket{{{M},le="+Inf"}} 40.0
helix:e2e_request_latency_seconds_sum{{{M}}} 60.0
helix:e2e_request_latency_seconds_count{{{M}}} 40.0
"""


def canned(prompt: float = 5000, generation: float = 2000, a: float = 30, t: float = 10) -> str:
    return (
        CANNED.replace("{prompt}", str(prompt))
        .replace("{generation}", str(generation))
        .replace("{routed_a}", str(a))
        .replace("{routed_t}", str(t))
    )


def _history() -> History:
    history = History(max_samples=10)
    history.push(parse_metrics(canned(), time_s=100.0))
    history.push(parse_metrics(canned(5400, 2500, 36, 12), time_s=101.0))
    history.push(parse_metrics(canned(5800, 3300, 42, 14), time_s=102.0))
    return history


def _text(renderable: object) -> str:
    console = Console(record=True, width=120, color_system=None)
    console.print(renderable)
    return console.export_text()


@pytest.mark.parametrize("use_client", [True, False])
def test_parse_metrics_two_nodes(use_client: bool) -> None:
    snap = parse_metrics(canned(), time_s=7.0, use_client=use_client)
    assert snap.model_names == ("llama-30b",)
    assert [n.node for n in snap.nodes] == ["a100-0", "t4-1"]  # sorted by first layer
    a100, t4 = snap.nodes
    assert (a100.gpu_kind, a100.layer_start, a100.layer_end) == ("A100", 0, 40)
    assert (t4.kv_usage, t4.tokens_per_s, t4.layer_end) == (0.95, 240.0, 60)
    assert (snap.num_running, snap.num_waiting) == (5.0, 2.0)
    assert (snap.prompt_tokens, snap.generation_tokens, snap.num_success) == (5000, 2000, 40)
    assert snap.prefix_hits / snap.prefix_queries == 0.25
    assert snap.planned == {("source", "a100-0"): 600.0, ("source", "t4-1"): 200.0}
    assert snap.routed[("source", "a100-0")] == 30.0
    assert snap.histograms["ttft"] == ((0.1, 10.0), (0.5, 30.0), (float("inf"), 40.0))


def test_fallback_parser_matches_prometheus_client() -> None:
    pytest.importorskip("prometheus_client")
    assert parse_metrics(canned(), use_client=False) == parse_metrics(canned(), use_client=True)
    escaped = 'x{a="q\\"uote",b="line\\nbreak"} 1 1700000000'
    assert list(parse_exposition(escaped)) == [("x", {"a": 'q"uote', "b": "line\nbreak"}, 1.0)]
    with pytest.raises(ValueError, match="Prometheus"):
        list(parse_exposition("not metrics at all"))


def test_rates_and_quantiles() -> None:
    history = _history()
    assert history.rates("generation_tokens") == [500.0, 800.0]
    assert history.edge_rates() == {("source", "a100-0"): 6.0, ("source", "t4-1"): 2.0}
    assert counter_rate(100.0, 10.0, 1.0) == 10.0  # a reset counts from zero
    ttft = parse_metrics(canned()).histograms["ttft"]
    assert histogram_quantile(0.5, ttft) == pytest.approx(0.3)  # rank 20: halfway in (0.1, 0.5]
    assert histogram_quantile(0.1, ttft) == pytest.approx(0.04)
    assert histogram_quantile(0.99, ttft) == pytest.approx(0.5)  # +Inf bucket: highest bound
    assert histogram_quantile(0.5, ((1.0, 0.0), (float("inf"), 0.0))) is None
    assert bucket_delta(((1.0, 5.0), (float("inf"), 6.0)), ((1.0, 2.0), (float("inf"), 2.0))) == (
        (1.0, 3.0),
        (float("inf"), 4.0),
    )
    assert sparkline([0.0, 1.0, 2.0, 4.0]) == "▁▃▅█"
    assert sparkline([0.0, 0.0]) == "▁▁"


def test_render_frame_with_two_nodes() -> None:
    history = _history()
    text = _text(render(history.latest, history, url="http://127.0.0.1:8000"))
    for expected in (
        "a100-0", "t4-1", "A100", "T4", "[0, 40)", "[40, 60)",  # nodes, GPUs, layers
        "42.0%", "95.0%", "812.5", "240.0",  # KV usage and node tokens/s
        "source → a100-0", "6.00", "75%", "600.0",  # routed req/s and share, planned flow
        "running 5", "waiting 2", "generation 800.0 tok/s", "prefix-cache hits 25%",
        "TTFT", "E2E", "peak 800.0",
    ):  # fmt: skip
        assert expected in text, expected
    assert "not responding" not in text


def test_render_without_history_shows_dashes() -> None:
    snap = dataclasses.replace(parse_metrics(canned()), routed={}, planned={})
    history = History()
    history.push(snap)
    text = _text(render(snap, history, url="u"))
    assert "(needs two samples)" in text and "flows" not in text


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_not_responding_frame() -> None:
    url = _closed_port_url()
    snapshot, error = top_cli.poll(url, time_s=0.0, timeout_s=1.0)
    assert snapshot is None and error
    text = _text(render(None, History(), url=url, error=error))
    assert f"server at {url} is not responding: {error}" in " ".join(text.split())
    stale = _text(render(_history().latest, _history(), url=url, error=error))
    assert "not responding" in stale and "last data seen" in stale and "a100-0" in stale


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="helix")
    top_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["top", *argv])


@pytest.fixture
def metrics_url() -> Iterator[str]:
    body = canned().encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_cli_once(metrics_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(["--url", metrics_url, "--once", "--interval", "0.05"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "a100-0" in out and "t4-1" in out


def test_cli_once_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    url = _closed_port_url()
    assert top_cli.cmd(_args(["--url", url, "--once"])) == 1
    assert "is not responding" in capsys.readouterr().out


def test_ctrl_c_exits_cleanly(monkeypatch: pytest.MonkeyPatch, metrics_url: str) -> None:
    def interrupt(_: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(top_cli.time, "sleep", interrupt)
    console = Console(record=True, width=120, color_system=None)
    assert top_cli.run_top(metrics_url, 0.01, console=console) == 0
    assert "a100-0" in console.export_text()
