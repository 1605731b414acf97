"""`helix profile` on a tiny random checkpoint writes a profile that loads back and drives the
simulator."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from helix import profile_cli

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=211,
        hidden_size=64,
        intermediate_size=97,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    return path


def run_profile(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="helix")
    profile_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["profile", *argv])
    return int(args.func(args))


def test_profile_writes_a_profile_that_loads_back_and_simulates(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from helix.config import cluster_from_dict
    from helix.planner.sim_workload import LengthSpec
    from helix.planner.simulate import SimConfig, simulate
    from helix.planning import plan

    out = tmp_path / "profile.yaml"
    argv = [
        str(tiny_checkpoint),
        "--batch-tokens",
        "1",
        "4",
        "16",
        "--context",
        "32",
        "--min-time",
        "0.01",
        "-o",
        str(out),
    ]
    assert run_profile(argv) == 0
    loaded = profile_cli.load_profile(out)
    assert list(loaded) == ["cpu"]
    profile, tables, meta = loaded["cpu"]
    assert meta == {"schema_version": 1, "model": str(tiny_checkpoint), "dtype": "float32"}
    assert profile.max_layers == 3 and len(profile.tokens_per_s) == 3
    assert profile.tokens_per_s[0] == pytest.approx(3 * profile.tokens_per_s[2], rel=1e-3)
    assert [n for n, _ in tables.prompt_layer_ms_by_tokens] == [1, 4, 16]
    for points in (tables.prompt_layer_ms_by_tokens, tables.decode_layer_ms_by_batch):
        times = [ms for _, ms in points]
        assert times == sorted(times) and times[0] > 0

    cluster = cluster_from_dict(
        {
            "model": str(tiny_checkpoint / "config.json"),
            "gpus": {"cpu": {"memory_gb": 1, "bf16_tflops": 0.1, "hbm_gbps": 10}},
            "nodes": [{"name": "box", "gpu": "cpu"}],
            "network": {"default": {"gbps": 10, "latency_ms": 0.1}},
            "profiles": {"cpu": {"max_layers": 3, "tokens_per_s": list(profile.tokens_per_s)}},
        }
    )
    short = LengthSpec(kind="fixed", prompt_mean_tokens=64, output_mean_tokens=8)
    result = simulate(
        cluster,
        plan(cluster, "greedy"),
        SimConfig(lengths=short, duration_s=60, warmup_s=2),
        tables={"cpu": tables},
    )
    assert result.total_tokens_per_s > 0 and result.num_completed > 0


def test_load_profile_names_bad_fields(tmp_path: Path) -> None:
    from helix.planner.spec import SpecError

    path = tmp_path / "bad.yaml"
    path.write_text(
        "cpu: {schema_version: 1, max_layers: 2, tokens_per_s: [10, 5],"
        " prompt_layer_ms_by_tokens: {1: 0.5}, decode_layer_ms_by_batch: {1: -1}}\n"
    )
    with pytest.raises(SpecError) as err:
        profile_cli.load_profile(path)
    assert err.value.path.startswith("cpu.decode_layer_ms_by_batch")
    path.write_text("cpu: {schema_version: 2}\n")
    with pytest.raises(SpecError, match="cpu.schema_version"):
        profile_cli.load_profile(path)


def test_profile_tables_reads_the_fields_a_profile_will_carry() -> None:
    from types import SimpleNamespace

    from helix.planner.sim_compute import TableCost, parse_layer_tables, profile_tables
    from helix.planner.spec import SpecError

    entry = {
        "prompt_layer_ms_by_tokens": {1: 0.5, 16: 2.0},
        "decode_layer_ms_by_batch": {1: 0.4, 8: 0.8},
    }
    tables = parse_layer_tables(entry, "profiles.cpu")
    assert tables is not None
    pairs = SimpleNamespace(**{key: tuple(value.items()) for key, value in entry.items()})
    assert profile_tables(SimpleNamespace(**entry)) == tables == profile_tables(pairs)  # type: ignore[arg-type]
    cost = TableCost(tables)
    assert cost.prompt_s(16, 0) == pytest.approx(2.0e-3)
    assert cost.prompt_s(31, 0) == pytest.approx(3.5e-3)  # last slope (0.1 ms/token) beyond
    assert cost.decode_s(4, 0) == pytest.approx((0.4 + 0.4 * 3 / 7) * 1e-3)
    assert parse_layer_tables({}, "profiles.cpu") is None
    with pytest.raises(SpecError, match="profiles.cpu.decode_layer_ms_by_batch"):
        parse_layer_tables({"prompt_layer_ms_by_tokens": {1: 1.0}}, "profiles.cpu")


def test_profile_tables_are_made_non_decreasing_by_pooling_violators() -> None:
    from helix.runtime.profiler import _monotone

    assert _monotone({1: 1.0, 8: 2.0, 32: 3.0}) == {1: 1.0, 8: 2.0, 32: 3.0}
    # a slow first case (seen on a GPU: 1.13 ms, then ~0.5 ms) no longer sets every floor
    pooled = _monotone({1: 1.2, 8: 0.5, 32: 0.4, 128: 0.6, 512: 0.9})
    assert pooled == {1: 0.675, 8: 0.675, 32: 0.675, 128: 0.675, 512: 0.9}
    values = list(_monotone({1: 3.0, 2: 1.0, 4: 2.0, 8: 5.0, 16: 4.0}).values())
    assert values == sorted(values) and values == [2.0, 2.0, 2.0, 4.5, 4.5]
