"""Clients that go away free their KV blocks; /metrics exports the helix: series."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

LONG = {"max_tokens": 400, "ignore_eos": True, "temperature": 0}


def _metric(text: str, prefix: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def test_dropped_stream_frees_blocks(server: Any) -> None:
    before = server.engine.stats()["generation_tokens"]
    body = {"model": server.model_name, "prompt": "Count to a thousand:", "stream": True, **LONG}
    url = f"{server.base_url}/v1/completions"
    with httpx.Client(timeout=60) as http, http.stream("POST", url, json=body) as response:
        assert response.status_code == 200
        assert next(response.iter_lines()).startswith("data: {")
    stats = server.wait_idle(timeout_s=4.0)  # 400 tokens would take far longer on a CPU
    assert stats["generation_tokens"] - before < 300
    assert stats["kv_cache_usage"] <= server.idle_usage


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_dropped_non_streaming_request_frees_blocks(server: Any, path: str) -> None:
    body: dict[str, Any] = {"model": server.model_name, **LONG}
    body |= {"prompt": "Tell a long story:"} if "chat" not in path else {
        "messages": [{"role": "user", "content": "Tell a long story."}]}  # fmt: skip
    before = server.engine.stats()["generation_tokens"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}{path}", json=body, timeout=httpx.Timeout(60, read=1.0))
    stats = server.wait_idle(timeout_s=4.0)
    assert stats["generation_tokens"] - before < 300


def test_metrics_exposition(server: Any) -> None:
    reply = httpx.post(
        f"{server.base_url}/v1/completions",
        json={"prompt": "Metrics are", "max_tokens": 3, "temperature": 0},
        timeout=60,
    )
    assert reply.status_code == 200
    response = httpx.get(f"{server.base_url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    label = f'model_name="{server.model_name}"'
    assert "helix:num_requests_running{model_name=" in text
    assert _metric(text, f"helix:time_to_first_token_seconds_count{{{label}}}") >= 1
    assert _metric(text, "helix:e2e_request_latency_seconds_count") >= 1
    assert _metric(text, "helix:generation_tokens_total") >= 3
    assert _metric(text, 'helix:request_success_total{finished_reason="length"') >= 1
    assert _metric(text, 'helix:routed_requests_total{dst="node0"') >= 1
    assert _metric(text, 'helix:routed_requests_total{dst="coordinator"') >= 1
    assert _metric(text, "helix:prefix_cache_queries_total") >= 3
    assert 'helix:node_info{gpu_kind="' in text and 'layer_start="0"' in text
    assert "helix:kv_cache_usage_perc{" in text and 'node="node0"' in text
    assert "_created" not in text
    from prometheus_client.parser import text_string_to_metric_families

    families = list(text_string_to_metric_families(text))
    assert all(f.name.startswith("helix:") for f in families)
    for family in families:
        for sample in family.samples:
            assert sample.labels["model_name"] == server.model_name, sample


def test_dropped_stream_counts_as_abort(server: Any) -> None:
    def aborted() -> float:
        text = httpx.get(f"{server.base_url}/metrics").text
        return _metric(text, 'helix:request_success_total{finished_reason="abort"')

    before = aborted()
    body = {"model": server.model_name, "prompt": "Once", "stream": True, **LONG}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=60) as r:
        next(r.iter_lines())
    server.wait_idle(timeout_s=4.0)
    deadline = time.monotonic() + 2
    while aborted() < before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert aborted() == before + 1
