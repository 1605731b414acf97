"""A node's measured time per pass beside its layers (`prompt_pass_ms_by_tokens`,
`decode_pass_ms_by_batch`): parsed with errors naming the field, round-tripped through the
profile and cluster files, charged once per pass on every node, and 0 for profiles without it."""

from __future__ import annotations

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

PROMPT_PASS = {1: 0.3, 64: 0.6, 512: 4.0}
DECODE_PASS = {1: 0.2, 4: 0.5, 8: 1.0}


def _entry(passes: bool = True) -> dict[str, object]:
    from helix.runtime.profiler import LayerTimings

    timings = LayerTimings(
        "cpu", "smollm2-135m", "float32", 30, 96, (30,), PROMPT, DECODE, HEAD, threads=2,
        prompt_pass_ms=PROMPT_PASS if passes else None,
        decode_pass_ms=DECODE_PASS if passes else None,
    )  # fmt: skip
    return profile_cli.profile_entry(timings)


def _tables() -> LayerTables:
    items = (PROMPT, DECODE, HEAD, PROMPT_PASS, DECODE_PASS)
    return LayerTables(*(tuple(t.items()) for t in items))


def test_pass_tables_round_trip_through_profile_and_cluster_files(tmp_path: Path) -> None:
    entry = _entry()
    assert entry["prompt_pass_ms_by_tokens"] == PROMPT_PASS
    assert entry["decode_pass_ms_by_batch"] == DECODE_PASS
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump({"cpu-2t": entry}, sort_keys=False))
    _, tables, _ = profile_cli.load_profile(path)["cpu-2t"]
    assert tables == _tables()
    cluster = cluster_from_dict(load_bench().cluster_dict(2, "cpu-2t", entry))
    assert profile_tables(cluster.profiles["cpu-2t"]) == tables
    again = cluster_from_dict(yaml.safe_load(yaml.safe_dump(cluster_to_dict(cluster))))
    assert again.profiles == cluster.profiles
    assert "prompt_pass_ms_by_tokens" not in _entry(passes=False)


def test_bad_pass_tables_name_the_field() -> None:
    layers = {"prompt_layer_ms_by_tokens": PROMPT, "decode_layer_ms_by_batch": DECODE}
    with pytest.raises(SpecError, match="profiles.cpu.decode_pass_ms_by_batch.4"):
        parse_layer_tables({**layers, "decode_pass_ms_by_batch": {4: -1.0}}, "profiles.cpu")
    with pytest.raises(SpecError, match="profiles.cpu.prompt_pass_ms_by_tokens"):
        parse_layer_tables({**layers, "prompt_pass_ms_by_tokens": [1, 2]}, "profiles.cpu")
    with pytest.raises(SpecError, match="profiles.cpu.prompt_layer_ms_by_tokens"):
        parse_layer_tables({"decode_pass_ms_by_batch": DECODE_PASS}, "profiles.cpu")
    data = load_bench().cluster_dict(1, "cpu", {**_entry(), "decode_pass_ms_by_batch": {"x": 1.0}})
    with pytest.raises(SpecError, match="profiles.cpu.decode_pass_ms_by_batch.x"):
        cluster_from_dict(data)


def test_every_node_pays_its_pass_time_once_per_pass_and_the_last_its_head() -> None:
    tables = _tables()
    inner = TableCost(tables)

    class FakeNode:
        def __init__(self, layers: tuple[int, int]) -> None:
            self.gpu, self.layers, self.cost = "cpu", layers, inner

    nodes = [FakeNode((0, 20)), FakeNode((20, 30))]
    add_head_costs(nodes, 30, {"cpu": tables})
    first, last = nodes[0].cost, nodes[1].cost
    assert isinstance(first, StageCost) and isinstance(last, StageCost)
    assert 20 * (first.decode_s(4, 0) - inner.decode_s(4, 0)) == pytest.approx(0.5e-3)
    assert 10 * (last.decode_s(4, 0) - inner.decode_s(4, 0)) == pytest.approx((0.5 + 4.0) / 1e3)
    # Eight prompts of 64 tokens: 512 tokens, eight sampled rows (head 6 ms) and a pass of 4 ms.
    extra = 10 * (last.prompt_s(512, 8 * 64**2) - inner.prompt_s(512, 8 * 64**2))
    assert extra == pytest.approx((6.0 + 4.0) / 1e3)
    assert first.prompt_s(0, 0) == first.decode_s(0, 0) == 0.0

    old = LayerTables(tuple(PROMPT.items()), tuple(DECODE.items()))
    plain = [FakeNode((0, 20)), FakeNode((20, 30))]
    add_head_costs(plain, 30, {"cpu": old})
    assert all(node.cost is inner for node in plain)  # an old profile: nothing added


def test_one_stage_simulation_adds_the_pass_time_to_every_pass() -> None:
    bench = load_bench()
    requests, prompt, output = 8, 64, 5
    data = bench.cluster_dict(1, "cpu-2t", _entry())
    data["network"] = {"default": {"gbps": 1e5, "latency_ms": 0.0}}
    cluster = cluster_from_dict(data)
    result = bench.simulated(cluster, bench.even_plan(cluster, 1), requests, prompt, output)
    tokens = requests * prompt
    prompt_pass = (30 * PROMPT[tokens] + HEAD[requests] + PROMPT_PASS[tokens]) / 1e3
    decode_pass = (30 * DECODE[requests] + HEAD[requests] + DECODE_PASS[requests]) / 1e3
    assert result["seconds"] == pytest.approx(prompt_pass + (output - 1) * decode_pass, rel=1e-6)


def test_co_runners_are_recorded_and_checked() -> None:
    from helix.runtime.profiler import LayerTimings

    timings = LayerTimings(
        "cpu", "smollm2-135m", "float32", 30, 96, (10,), PROMPT, DECODE, HEAD, threads=1,
        co_runners=2,
    )  # fmt: skip
    entry = profile_cli.profile_entry(timings)
    assert entry["co_runners"] == 2
    cluster_from_dict(load_bench().cluster_dict(3, "cpu", entry))
    for bad in (-1, True, "2"):
        with pytest.raises(SpecError, match="profiles.cpu.co_runners"):
            cluster_from_dict(load_bench().cluster_dict(3, "cpu", {**entry, "co_runners": bad}))


def test_other_work_leaves_out_this_process_and_its_children() -> None:
    import os
    import subprocess
    import sys

    bench = load_bench()
    if not Path("/proc/stat").exists():
        pytest.skip("needs /proc")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        assert {os.getpid(), child.pid} <= set(bench._descendants(os.getpid()))
    finally:
        child.kill()
        child.wait()
    foreign = bench.Foreign()
    assert 0.0 <= foreign.share() <= 1.0
