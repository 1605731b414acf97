"""The deterministic inputs of the simulator-vs-runtime check (benchmarks/sim_validation.py): a
measured profile with its LM head time round-trips into the simulator, the head is charged to the
last stage only, and a one-stage simulation of the runtime's offline batch equals the analytic
time from the profile."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from validation_bench import DECODE, HEAD, PROMPT, load_bench

from helix import profile_cli
from helix.config import cluster_from_dict, cluster_to_dict
from helix.planner.sim_compute import (
    LayerTables,
    StageCost,
    TableCost,
    add_head_costs,
    parse_layer_tables,
    profile_tables,
)
from helix.planner.spec import SpecError

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _entry() -> dict[str, object]:
    from helix.runtime.profiler import LayerTimings

    timings = LayerTimings(
        "cpu", "smollm2-135m", "float32", 30, 96, (1, 2, 4), PROMPT, DECODE, HEAD, threads=1
    )
    return profile_cli.profile_entry(timings)


def test_measured_profile_round_trips_with_its_head_and_threads(tmp_path: Path) -> None:
    entry = _entry()
    assert entry["threads"] == 1 and entry["head_ms_by_batch"] == HEAD
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump({"cpu-1t": entry}, sort_keys=False))
    profile, tables, meta = profile_cli.load_profile(path)["cpu-1t"]
    assert meta["model"] == "smollm2-135m" and profile.max_layers == 30
    assert tables.head_ms_by_batch == tuple(HEAD.items())
    assert tables.decode_layer_ms_by_batch == tuple(DECODE.items())

    bench = load_bench()
    cluster = cluster_from_dict(bench.cluster_dict(2, "cpu-1t", entry))
    assert profile_tables(cluster.profiles["cpu-1t"]) == tables
    again = cluster_from_dict(yaml.safe_load(yaml.safe_dump(cluster_to_dict(cluster))))
    assert again.profiles == cluster.profiles


def test_head_table_needs_the_layer_tables_and_threads_must_be_positive() -> None:
    with pytest.raises(SpecError, match="profiles.cpu.prompt_layer_ms_by_tokens"):
        parse_layer_tables({"head_ms_by_batch": {1: 1.0}}, "profiles.cpu")
    with pytest.raises(SpecError, match="head_ms_by_batch.4"):
        parse_layer_tables(
            {
                "prompt_layer_ms_by_tokens": PROMPT,
                "decode_layer_ms_by_batch": DECODE,
                "head_ms_by_batch": {4: 0.0},
            },
            "profiles.cpu",
        )
    data = load_bench().cluster_dict(1, "cpu", {**_entry(), "threads": 0})
    with pytest.raises(SpecError, match="profiles.cpu.threads"):
        cluster_from_dict(data)


def test_the_head_is_charged_once_per_pass_on_the_last_stage_only() -> None:
    tables = LayerTables(tuple(PROMPT.items()), tuple(DECODE.items()), tuple(HEAD.items()))
    cost = StageCost(TableCost(tables), 10, tables.head_ms_by_batch)
    inner = TableCost(tables)
    assert 10 * (cost.decode_s(4, 0) - inner.decode_s(4, 0)) == pytest.approx(4.0e-3)
    # Four prompts of 16 tokens: 64 tokens, squared lengths 4 * 256: four sampled rows.
    assert 10 * (cost.prompt_s(64, 1024) - inner.prompt_s(64, 1024)) == pytest.approx(4.0e-3)
    assert cost.prompt_s(0, 0) == cost.decode_s(0, 0) == 0.0

    class FakeNode:
        def __init__(self, layers: tuple[int, int]) -> None:
            self.gpu, self.layers, self.cost = "cpu", layers, inner

    nodes = [FakeNode((0, 20)), FakeNode((20, 30))]
    add_head_costs(nodes, 30, {"cpu": tables})
    assert nodes[0].cost is inner and isinstance(nodes[1].cost, StageCost)


@pytest.mark.parametrize("stages", [1, 2, 3])
def test_the_runtime_batching_as_a_sim_config(stages: int) -> None:
    bench = load_bench()
    config = bench.sim_config(32, 64, 64, stages)
    # as many micro-batches as LocalCluster keeps in flight: one per stage, at most one per
    # pass the shared cores run at once
    cores = os.cpu_count() or 1
    depth = min(stages, cores // max(1, cores // stages))
    batch = -(-32 // depth)
    assert bench.micro_batch(32, 3, cores=2) == 16 and bench.micro_batch(32, 3, cores=8) == 11
    # at most `depth` nodes compute at once: a 3-stage node on 2 cores has one co-runner
    assert bench.pipeline_depth(3, cores=2) == 2 and bench.pipeline_depth(3, cores=8) == 3
    assert config.max_batch_seqs == batch and config.prompt_max_tokens == batch * 64
    assert config.max_prefilling == config.num_requests == 32
    assert config.lengths.kind == "fixed" and config.lengths.output_mean_tokens == 63
    placement = bench.even_placement(stages)
    assert sorted(placement.values())[0][0] == 0 and max(e for _, e in placement.values()) == 30
    assert bench.profile_sizes(32, 64, stages) == (
        sorted({1, 64, batch * 64}),
        sorted({1, 4, batch}),
    )


def test_one_stage_simulation_equals_the_analytic_time_of_the_profile() -> None:
    bench = load_bench()
    requests, prompt, output = 8, 64, 5
    data = bench.cluster_dict(1, "cpu-2t", _entry())
    data["network"] = {"default": {"gbps": 1e5, "latency_ms": 0.0}}  # links cost ~nothing
    cluster = cluster_from_dict(data)
    plan = bench.even_plan(cluster, 1)
    result = bench.simulated(cluster, plan, requests, prompt, output)

    # 8 prompts of 64 tokens fill one pass of 512 tokens; decode passes carry 8 sequences.
    prompt_pass = (30 * PROMPT[requests * prompt] + HEAD[requests]) / 1e3
    decode_pass = (30 * DECODE[requests] + HEAD[requests]) / 1e3
    expected = prompt_pass + (output - 1) * decode_pass
    assert result["seconds"] == pytest.approx(expected, rel=1e-6)
    assert result["generated_tokens_per_s"] == pytest.approx(requests * output / expected)
    assert result["utilisation"] == {"cpu-0": pytest.approx(1.0)}


def test_profiler_pins_threads_and_times_the_head(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from helix.runtime.profiler import measure_layer_times

    config = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    before = torch.get_num_threads()
    timings = measure_layer_times(
        str(tmp_path),
        batch_tokens=[1, 32],
        decode_batches=[1, 3],
        context_tokens=16,
        layer_counts=[1, 2],
        min_time_s=0.0,
        max_runs=3,
        threads=1,
        prompt_seq_tokens=16,
    )
    assert torch.get_num_threads() == before
    assert timings.threads == 1 and timings.dtype == "float32"
    assert list(timings.prompt_layer_ms) == [1, 32]
    assert list(timings.decode_layer_ms) == [1, 3]
    assert timings.head_ms is not None and list(timings.head_ms) == [1, 3]
    entry = profile_cli.profile_entry(timings)
    assert parse_layer_tables(entry, "cpu") is not None
