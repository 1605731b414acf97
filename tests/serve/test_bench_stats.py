"""Pure statistics of `helix bench`: percentiles, TPOT, goodput, arrivals, summaries."""

from __future__ import annotations

import math

import pytest

from helix.bench import (
    RequestResult,
    arrival_intervals,
    latency_stats,
    meets_slos,
    parse_goodput,
    percentile,
    summarize,
)


def _ok(ttft_s: float, latency_s: float, output_len: int, prompt_len: int = 10) -> RequestResult:
    return RequestResult(prompt_len, True, output_len, ttft_s, latency_s)


def test_percentile_interpolates_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0
    with pytest.raises(ValueError, match="percentile"):
        percentile(values, 101)


def test_latency_stats_are_in_ms() -> None:
    stats = latency_stats([0.1, 0.2, 0.3])
    assert stats.mean_ms == pytest.approx(200.0)
    assert stats.median_ms == pytest.approx(200.0)
    assert stats.std_ms == pytest.approx(math.sqrt(20000 / 3))
    assert stats.p99_ms == pytest.approx(298.0)


def test_tpot_excludes_one_token_outputs() -> None:
    long = _ok(ttft_s=0.1, latency_s=0.5, output_len=5)
    single = _ok(ttft_s=0.2, latency_s=0.2, output_len=1)
    assert long.tpot_s == pytest.approx(0.1)
    assert single.tpot_s is None
    summary = summarize([long, single], duration_s=2.0)
    assert summary.tpot.mean_ms == pytest.approx(100.0)  # only the 5-token request counts
    assert summary.ttft.mean_ms == pytest.approx(150.0)  # TTFT counts both


def test_goodput_requires_every_slo() -> None:
    fast = _ok(0.05, 0.45, 5)  # ttft 50 ms, tpot 100 ms, e2el 450 ms
    slow_start = _ok(0.5, 0.9, 5)  # ttft 500 ms, tpot 100 ms
    one_token = _ok(0.05, 0.05, 1)  # tpot counts as 0 for goodput
    failed = RequestResult(10, error="HTTP 500: boom")
    slos = parse_goodput(["ttft:100", "tpot:150"])
    assert slos == {"ttft": 100.0, "tpot": 150.0}
    assert [meets_slos(r, slos) for r in (fast, slow_start, one_token, failed)] == [
        True,
        False,
        True,
        False,
    ]
    assert not meets_slos(fast, {"e2el": 400.0})
    summary = summarize([fast, slow_start, one_token, failed], duration_s=2.0, slos_ms=slos)
    assert summary.request_goodput == pytest.approx(1.0)  # 2 good requests in 2 s
    assert summarize([fast], 1.0).request_goodput is None


@pytest.mark.parametrize("bad", ["ttft", "latency:5", "tpot:abc", "e2el:0", "ttft:-1"])
def test_parse_goodput_rejects_bad_items(bad: str) -> None:
    with pytest.raises(ValueError, match="--goodput"):
        parse_goodput([bad])


def test_summary_counts_throughput_and_errors() -> None:
    results = [
        _ok(0.1, 1.0, 20, prompt_len=100),
        _ok(0.1, 1.0, 30, prompt_len=50),
        RequestResult(7, error="stream ended before data: [DONE]"),
        RequestResult(7, error="stream ended before data: [DONE]"),
    ]
    results[0].itl_s = [0.01, 0.03]
    results[1].itl_s = [0.02]
    summary = summarize(results, duration_s=5.0)
    assert (summary.completed, summary.failed) == (2, 2)
    assert (summary.total_input, summary.total_output) == (150, 50)
    assert summary.request_throughput == pytest.approx(0.4)
    assert summary.output_throughput == pytest.approx(10.0)
    assert summary.total_token_throughput == pytest.approx(40.0)
    assert summary.itl.median_ms == pytest.approx(20.0)  # pooled over requests
    assert summary.errors == {"stream ended before data: [DONE]": 2}
    assert summary.to_dict()["ttft"]["mean_ms"] == pytest.approx(100.0)


def test_arrival_intervals() -> None:
    assert arrival_intervals(4, math.inf) == [0.0] * 4
    gaps = arrival_intervals(20_000, 50.0, seed=3)
    assert gaps == arrival_intervals(20_000, 50.0, seed=3)
    assert gaps != arrival_intervals(20_000, 50.0, seed=4)
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 50.0, rel=0.05)
    with pytest.raises(ValueError, match="rate"):
        arrival_intervals(3, 0.0)
