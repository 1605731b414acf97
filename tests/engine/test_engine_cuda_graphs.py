"""CUDA-graph decode: padded sizes, backend choice, and (on a GPU) the same greedy ids as eager."""

from __future__ import annotations

import pytest

from helix.kernels import get_attention, resolve_attention
from helix.runtime.cuda_graphs import capture_sizes, padded_size
from helix.runtime.engine_config import EngineConfig


def test_capture_sizes_cover_every_batch_up_to_the_limit() -> None:
    assert capture_sizes(1) == [1]
    assert capture_sizes(6) == [1, 2, 4, 6]
    assert capture_sizes(64) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
    sizes = capture_sizes(20)
    for n in range(1, 21):
        size = padded_size(sizes, n)
        assert size is not None and size >= n
        assert all(s < n for s in sizes if s < size)  # the smallest that holds n
    assert padded_size(sizes, 21) is None
    with pytest.raises(ValueError, match="max_num_seqs"):
        capture_sizes(0)


def test_auto_backend_is_torch_on_the_cpu_and_only_triton_may_be_captured() -> None:
    assert resolve_attention("auto", "cpu") == "torch"
    assert resolve_attention("pallas", "cuda") == "pallas"
    assert get_attention("triton").cuda_graph_safe
    # the torch backend reads sequence lengths on the host; pallas runs through jax
    assert not get_attention("torch").cuda_graph_safe
    assert not get_attention("pallas").cuda_graph_safe


def test_engine_config_takes_auto_and_enforce_eager() -> None:
    assert EngineConfig().attention_backend == "auto"
    assert EngineConfig(enforce_eager=True).enforce_eager
    with pytest.raises(ValueError, match="attention_backend"):
        EngineConfig(attention_backend="flash")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_graph_decode_gives_the_eager_greedy_ids(tiny_models, dtype: str) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or importlib_missing("triton"):
        pytest.skip("needs a CUDA GPU and triton")
    from helix import LLM, SamplingParams

    tiny = tiny_models["llama_llama3_untied"]
    # 5 and 3 prompts pad to graphs of 8 and 4 rows; lengths cross block boundaries.
    batches = [[[5 + i, 7, 11 + 3 * i] * (1 + 5 * i) for i in range(5)], [[9, 4], [3] * 17, [8]]]
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    results = {}
    for eager in (True, False):
        llm = LLM(
            str(tiny.path),
            device="cuda",
            dtype=dtype,
            attention_backend="triton",
            enforce_eager=eager,
            max_num_seqs=8,
            max_model_len=256,
            block_size=16,
        )
        graphs = llm.engine.runner.graphs
        assert (graphs is None) == eager
        results[eager] = [
            [o.outputs[0].token_ids for o in llm.generate(b, params)] for b in batches
        ]
        if graphs is not None:
            assert graphs.replays >= 2 * 39  # every decode step of both batches
    # Padding changes the GEMM row count and the attention split count, so rounding may differ:
    # fp32 agrees on every sequence's first 16 tokens and 7 of 8 in full; bf16 on 6 of 8.
    pairs = [(a, b) for x, y in zip(results[False], results[True]) for a, b in zip(x, y)]
    same = sum(a == b for a, b in pairs)
    if dtype == "float32":
        assert all(a[:16] == b[:16] for a, b in pairs)
        assert same >= 7
    else:
        assert same >= 6


def importlib_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


def test_padded_static_buffer_steps_give_the_eager_greedy_ids(tiny_models) -> None:
    """The graph path's inputs (static buffers, padding rows, one staged copy), run eagerly on
    the CPU: the same greedy ids as the plain engine, for batches that pad to 4 and 8 rows."""
    from helix import LLM, SamplingParams
    from helix.runtime.cuda_graphs import DecodeGraphs

    tiny = tiny_models["llama_linear_tied_bias"]
    batches = [[[5 + i, 7, 11 + 3 * i] * (1 + 5 * i) for i in range(5)], [[9, 4], [3] * 17, [8]]]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    results = []
    for padded in (False, True):
        llm = LLM(str(tiny.path), device="cpu", max_num_seqs=8, max_model_len=128)
        runner = llm.engine.runner
        if padded:
            runner.graphs = DecodeGraphs(
                runner.stage, runner.kv_caches, runner.block_size, 128, 8, capture=False
            )
        results.append([[o.outputs[0].token_ids for o in llm.generate(b, params)] for b in batches])
        if padded:
            assert runner.graphs.replays >= 2 * 23
    assert results[0] == results[1]
