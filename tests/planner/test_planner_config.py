"""Cluster YAML validation (errors name the field), YAML round trips, and the CLI's exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from planner_fixtures import PAPER_CLUSTER, frontier_cluster, tiny

from helix.cli import main
from helix.config import cluster_from_dict, cluster_to_dict, load_cluster
from helix.planner.plan import Plan
from helix.planner.problem import build_problem
from helix.planner.solvers import SolveOptions, solve
from helix.planner.spec import SpecError
from helix.report import load_plan, save_plan


def base() -> dict:
    return tiny({"A": [100.0] * 20}, [("a", "A"), ("b", "A")])


def broken(edit) -> dict:
    data = base()
    edit(data)
    return data


BAD = [
    (lambda d: d.update(model="gpt-17"), "model", "unknown model"),
    (lambda d: d["nodes"].append({"name": "x", "gpu": "TPU9"}), "nodes[2].gpu", "unknown GPU"),
    (lambda d: d["nodes"].append({"name": "a", "gpu": "A"}), "nodes", "duplicate"),
    (lambda d: d["nodes"][0].pop("gpu"), "nodes[0].gpu", "missing"),
    (
        lambda d: d.update(network={"links": [{"between": ["a", "zz"], "gbps": 1}]}),
        "network.links[0].between",
        "unknown node",
    ),
    (lambda d: d.update(network={"default": {"gbps": 0}}), "network.default.gbps", "> 0"),
    (lambda d: d.update(network={"default": {"gbps": -3}}), "network.default.gbps", "> 0"),
    (
        lambda d: d.update(network={"default": {"gbps": 1, "latency_ms": -1}}),
        "network.default.latency_ms",
        ">= 0",
    ),
    (lambda d: d["nodes"][0].update(nic_gbps="fast"), "nodes[0].nic_gbps", "number"),
    (lambda d: d["profiles"]["A"].update(tokens_per_s=[1.0, -2.0]), "profiles.A", "> 0"),
    (lambda d: d.update(colour="red"), "colour", "unknown key"),
    (lambda d: d.update(nodes=[]), "nodes", "non-empty"),
]


@pytest.mark.parametrize("edit,path,words", BAD)
def test_bad_input_names_the_field(edit, path, words) -> None:
    with pytest.raises(SpecError) as info:
        build_problem(cluster_from_dict(broken(edit)))
    assert info.value.path.startswith(path)
    assert words in str(info.value)


def test_node_that_cannot_hold_one_layer() -> None:
    data = {
        "model": "llama-2-70b",
        "gpus": {"tiny": {"memory_gb": 1, "bf16_tflops": 10, "hbm_gbps": 100}},
        "nodes": [{"name": "t", "gpu": "tiny"}],
        "network": {"default": {"gbps": 10}},
    }
    with pytest.raises(SpecError, match="cannot hold one layer") as info:
        build_problem(cluster_from_dict(data))
    assert info.value.path == "nodes[0].gpu"


def test_cluster_that_cannot_hold_the_model_once() -> None:
    data = {
        "model": "llama-2-70b",
        "nodes": [{"name": "t", "gpu": "T4", "count": 3}],
        "network": {"default": {"gbps": 10}},
    }
    with pytest.raises(SpecError, match="at most 12 layers in all, fewer than the 80"):
        build_problem(cluster_from_dict(data))


def test_count_shorthand_and_catalog_override() -> None:
    cluster = cluster_from_dict(
        {
            "model": "llama-3-8b",
            "gpus": {"T4x2": {"base": "T4", "memory_gb": 32}},
            "nodes": [{"name": "t", "gpu": "T4x2", "count": 3}],
            "network": {"default": {"gbps": 10}},
        }
    )
    assert [n.name for n in cluster.nodes] == ["t-0", "t-1", "t-2"]
    assert cluster.gpus["T4x2"].memory_gb == 32 and cluster.gpus["T4x2"].hbm_gbps == 320


def test_model_from_hf_config(tmp_path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "num_hidden_layers": 7,
                "hidden_size": 96,
                "num_attention_heads": 6,
                "num_key_value_heads": 2,
                "intermediate_size": 200,
                "vocab_size": 500,
            }
        )
    )
    data = base()
    data["model"] = str(tmp_path)
    assert build_problem(cluster_from_dict(data)).num_layers == 7
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SpecError, match="lacks 'num_attention_heads'"):
        cluster_from_dict(data)


def test_cluster_yaml_round_trip() -> None:
    cluster = load_cluster(PAPER_CLUSTER)
    again = cluster_from_dict(yaml.safe_load(yaml.safe_dump(cluster_to_dict(cluster))))
    assert again == cluster


def test_plan_yaml_round_trip(tmp_path, paper_problem) -> None:
    plan = solve(paper_problem, "greedy", SolveOptions(time_limit_s=5))
    save_plan(plan, tmp_path / "plan.yaml")
    loaded = load_plan(tmp_path / "plan.yaml")
    assert loaded.to_dict() == plan.to_dict()
    data = yaml.safe_load((tmp_path / "plan.yaml").read_text())
    assert set(data) >= {
        "model",
        "throughput_tokens_per_s",
        "upper_bound_tokens_per_s",
        "solver",
        "nodes",
        "flows",
    }
    assert all(set(f) == {"from", "to", "tokens_per_s"} for f in data["flows"])
    assert all(n["layers"][0] < n["layers"][1] for n in data["nodes"].values())
    with pytest.raises(SpecError, match="layers"):
        Plan.from_dict({**data, "nodes": {"x": {"layers": [5, 2]}}})


def test_cli_plan_writes_yaml_json_and_png(tmp_path, capsys) -> None:
    out, png = tmp_path / "plan.yaml", tmp_path / "plan.png"
    assert (
        main(["plan", str(PAPER_CLUSTER), "--time-limit", "20", "-o", str(out), "--png", str(png)])
        == 0
    )
    text = capsys.readouterr().out
    assert "2,045.64" in text and "a100" in text
    assert load_plan(out).throughput_tokens_per_s == pytest.approx(2045.641, abs=0.01)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plan", str(PAPER_CLUSTER), "--solver", "swarm", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["throughput_tokens_per_s"] == pytest.approx(757.853, abs=0.01)


@pytest.mark.parametrize(
    "content,words",
    [
        ("model: [unclosed", "not valid YAML"),
        (
            "model: llama-2-70b\nnodes:\n- {name: a, gpu: H100}\nnetwork: {default: {gbps: 0}}\n",
            "network.default.gbps",
        ),
        (
            "model: llama-2-70b\nnodes:\n- {name: a, gpu: T4}\nnetwork: {default: {gbps: 5}}\n",
            "fewer than the 80 layers",
        ),
    ],
)
def test_cli_bad_input_exits_nonzero_without_traceback(tmp_path, content, words) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(content)
    result = subprocess.run(
        [sys.executable, "-m", "helix.cli", "plan", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert words in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_missing_file(capsys) -> None:
    assert main(["plan", "/nonexistent/cluster.yaml"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_pareto_simulate_keeps_the_best_simulated_point(tmp_path, capsys) -> None:
    data = frontier_cluster()
    path, out = tmp_path / "cluster.yaml", tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump(data))
    args = ["plan", str(path), "--pareto", "--simulate", "--time-limit", "8", "-o", str(out)]
    assert main([*args, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) >= 2
    assert all(row["simulated_decode_tokens_per_s"] > 0 for row in rows)
    (best,) = [row for row in rows if row["best_simulated"]]
    assert best["simulated_decode_tokens_per_s"] == max(
        row["simulated_decode_tokens_per_s"] for row in rows
    )
    written = load_plan(out)
    assert written.throughput_tokens_per_s == pytest.approx(best["throughput_tokens_per_s"])
    assert main(["plan", str(path), "--simulate"]) == 2
    assert "--simulate goes with --pareto" in capsys.readouterr().err
