"""`helix simulate` end to end through its argparse front (the subcommand's own add_parser)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from helix import simulate_cli
from helix.report import save_plan

CLUSTER = {
    "model": "llama-3-8b",
    "nodes": [{"name": n, "gpu": "A100-40GB"} for n in ("a0", "a1", "b0", "b1")],
    "network": {"default": {"gbps": 100, "latency_ms": 1}},
}


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="helix")
    simulate_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["simulate", *argv])
    return int(args.func(args))


@pytest.fixture
def cluster_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(CLUSTER))
    return path


def test_simulate_plans_with_milp_when_no_plan_is_given_and_prints_json(
    cluster_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(cluster_file), "--time-limit", "5", "--duration", "40", "--warmup", "5", "--json"]
    assert run_cli(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["routing"] == "maxflow" and result["mode"] == "offline"
    assert result["total_tokens_per_s"] > 0
    assert {"mean", "p50", "p99"} <= set(result["prompt_latency_s"])
    assert {node["name"] for node in result["nodes"]} <= {"a0", "a1", "b0", "b1"}


def test_simulate_reads_a_plan_prints_tables_and_draws(
    cluster_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from helix.planning import plan

    plan_path, png = tmp_path / "plan.yaml", tmp_path / "sim.png"
    save_plan(plan(cluster_file, "greedy"), plan_path)
    argv = [
        str(cluster_file),
        "--plan",
        str(plan_path),
        "--routing",
        "swarm",
        "--mode",
        "online",
        "--rate",
        "2",
        "--duration",
        "30",
        "--warmup",
        "0",
        "--png",
        str(png),
    ]
    assert run_cli(argv) == 0
    out = capsys.readouterr().out
    assert "decode tokens/s" in out and "swarm routing" in out and "a0" in out
    assert png.stat().st_size > 10_000


def test_simulate_bursty_arrivals(cluster_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        str(cluster_file),
        "--solver",
        "greedy",
        "--mode",
        "online",
        "--mmpp-rates",
        "6",
        "0.5",
        "--mmpp-dwell",
        "5",
        "10",
        "--duration",
        "30",
        "--warmup",
        "0",
        "--json",
    ]
    assert run_cli(argv) == 0
    assert json.loads(capsys.readouterr().out)["requests"]["admitted"] > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mode", "online", "--rate", "-1"], "rate_per_s"),
        (["--mode", "online"], "rate_per_s"),
        (["--plan", "missing.yaml"], "cannot read plan"),
    ],
)
def test_simulate_bad_input_raises_value_error(
    cluster_file: Path, extra: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        run_cli([str(cluster_file), "--solver", "greedy", *extra])
