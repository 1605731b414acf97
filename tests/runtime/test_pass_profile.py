"""`measure_pass_ms`: a node's per-pass work beside its layers, timed through the real
StageWorker between real ipc:// endpoints."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("zmq")


def test_pass_times_cover_every_size() -> None:
    from helix.runtime.pass_profile import measure_pass_ms

    prompt, decode = measure_pass_ms(
        64,
        prompt_tokens=[16, 40],
        decode_batches=[1, 3],
        prompt_seq_tokens=16,
        context_tokens=20,
        min_time_s=0.0,
        max_runs=3,
        statistic="min",
    )
    assert list(prompt) == [16, 40] and list(decode) == [1, 3]
    assert all(ms > 0 for ms in [*prompt.values(), *decode.values()])


def test_the_free_stage_returns_hidden_states_in_the_model_dtype() -> None:
    from helix.runtime.pass_profile import _FreeStage

    stage = _FreeStage(8, torch.bfloat16)
    out = stage(None, torch.arange(5))
    assert out.shape == (5, 8) and out.dtype == torch.bfloat16
    assert stage.allocate_kv_cache(4, 16) == []


def test_co_runners_start_run_and_stop(tmp_path) -> None:  # type: ignore[no-untyped-def]
    transformers = pytest.importorskip("transformers")
    from helix.runtime.co_runners import CoRunners
    from helix.runtime.profiler import measure_layer_times

    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    runners = CoRunners(1, str(tmp_path), layers=2, threads=1, batch=2, context=8)
    with runners:
        assert len(runners.procs) == 1 and runners.procs[0].is_alive()
    assert runners.procs == []
    timings = measure_layer_times(
        str(tmp_path), batch_tokens=[1, 8], decode_batches=[1, 2], context_tokens=8,
        layer_counts=[2], min_time_s=0.0, max_runs=3, threads=1, prompt_seq_tokens=8,
        co_runners=1,
    )  # fmt: skip
    assert timings.co_runners == 1
    assert timings.decode_pass_ms is not None and list(timings.decode_pass_ms) == [1, 2]
    with pytest.raises(ValueError, match="co_runners"):
        CoRunners(-1, str(tmp_path), layers=2, threads=1, batch=2, context=8)
