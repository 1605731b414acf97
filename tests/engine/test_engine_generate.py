"""The engine against HF transformers: greedy ids, logprobs, prefix caching, chunked prefill,
preemption, n > 1, seeds, stops, and bad input."""

from __future__ import annotations

import random

import pytest
import torch

from helix import LLM, SamplingParams

MODELS = ["llama_llama3_untied", "llama_linear_tied_bias", "qwen2_tied"]


def hf_greedy(hf_model, prompt: list[int], new_tokens: int) -> list[int]:
    """transformers `generate`, greedy, EOS disabled (helix runs with ignore_eos=True)."""
    config = hf_model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = None
    try:
        with torch.inference_mode():
            ids = torch.tensor([prompt])
            out = hf_model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=new_tokens,
                pad_token_id=0,
            )
    finally:
        config.eos_token_id = saved
    return out[0, len(prompt) :].tolist()


def prompts(vocab: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(n)] for n in lengths]


def run(llm: LLM, batch: list[list[int]], new_tokens: int, **kw) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True, **kw)
    outs = llm.generate([{"prompt_token_ids": p} for p in batch], params)
    return [o.outputs[0].token_ids for o in outs]


ENGINE_VARIANTS = {
    "default": {},
    "no_prefix_caching": {"enable_prefix_caching": False},
    "chunked_prefill": {"max_num_batched_tokens": 8, "block_size": 8},
    "preemption": {"num_kv_blocks": 14, "block_size": 8, "max_num_seqs": 8},
}


@pytest.mark.parametrize("variant", sorted(ENGINE_VARIANTS))
@pytest.mark.parametrize("name", MODELS)
def test_greedy_ids_match_hf(tiny_models, name: str, variant: str) -> None:
    tiny = tiny_models[name]
    vocab = tiny.hf_model.config.vocab_size
    # Mixed lengths, and two prompts sharing a 20-token prefix (prefix caching has work to do).
    batch = prompts(vocab, [5, 1, 23, 12, 17], seed=1)
    batch.append(batch[2][:20] + [3, 4])
    llm = LLM(str(tiny.path), **ENGINE_VARIANTS[variant])
    ours = run(llm, batch, 12)
    expected = [hf_greedy(tiny.hf_model, p, 12) for p in batch]
    assert ours == expected
    if variant == "preemption":
        assert llm.engine.scheduler.num_preemptions > 0
    llm.engine.scheduler.check_integrity()


def test_prefix_cache_is_hit_for_a_shared_prefix(tiny_models) -> None:
    tiny = tiny_models["llama_llama3_untied"]
    llm = LLM(str(tiny.path), block_size=8)
    base = prompts(tiny.hf_model.config.vocab_size, [40], seed=2)[0]
    params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    first = llm.generate([{"prompt_token_ids": base}], params)[0]
    second = llm.generate([{"prompt_token_ids": base[:33] + [5]}], params)[0]
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens == 32  # four full blocks of 8


def test_logprobs_match_hf(tiny_models) -> None:
    tiny = tiny_models["qwen2_tied"]
    llm = LLM(str(tiny.path))
    prompt = prompts(tiny.hf_model.config.vocab_size, [9], seed=3)[0]
    out = llm.generate(
        [{"prompt_token_ids": prompt}],
        SamplingParams(temperature=0, max_tokens=5, ignore_eos=True, logprobs=3),
    )
    completion = out[0].outputs[0]
    ids = prompt + completion.token_ids
    with torch.inference_mode():
        logits = tiny.hf_model(torch.tensor([ids])).logits[0].float()
    expected = torch.log_softmax(logits, -1)
    assert completion.logprobs is not None and len(completion.logprobs) == 5
    for step, entry in enumerate(completion.logprobs):
        row = expected[len(prompt) - 1 + step]
        assert len(entry) >= 3
        for token, value in entry.items():
            assert value == pytest.approx(row[token].item(), abs=1e-4)


def test_n_samples_share_the_prompt_and_seeds_reproduce(tiny_models) -> None:
    tiny = tiny_models["llama_linear_tied_bias"]
    llm = LLM(str(tiny.path), block_size=4)
    prompt = {"prompt_token_ids": prompts(tiny.hf_model.config.vocab_size, [17], seed=4)[0]}
    params = SamplingParams(n=3, temperature=1.0, seed=11, max_tokens=8, ignore_eos=True)
    first = llm.generate([prompt], params)[0]
    assert [o.index for o in first.outputs] == [0, 1, 2]
    assert len({tuple(o.token_ids) for o in first.outputs}) > 1  # different seeds per sample
    # Same seed, different company in the batch: same tokens.
    other = {"prompt_token_ids": [1, 2, 3]}
    again = llm.generate([other, prompt], [SamplingParams(temperature=1.0, max_tokens=5), params])
    assert [o.token_ids for o in again[1].outputs] == [o.token_ids for o in first.outputs]


def test_stop_token_and_max_tokens(tiny_models) -> None:
    tiny = tiny_models["llama_llama3_untied"]
    llm = LLM(str(tiny.path))
    prompt = prompts(tiny.hf_model.config.vocab_size, [6], seed=5)[0]
    expected = hf_greedy(tiny.hf_model, prompt, 10)
    stop_at = expected[4]
    out = llm.generate(
        [{"prompt_token_ids": prompt}],
        SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, stop_token_ids=[stop_at]),
    )[0].outputs[0]
    assert out.token_ids == expected[: expected.index(stop_at) + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_at
    out = llm.generate(
        [{"prompt_token_ids": prompt}], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    )[0].outputs[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 3


def test_bad_input_is_a_value_error_and_others_keep_running(tiny_models, tmp_path) -> None:
    tiny = tiny_models["qwen2_tied"]
    llm = LLM(str(tiny.path), max_model_len=32)
    engine = llm.engine
    good = engine.add_request(
        {"prompt_token_ids": [1, 2, 3]},
        SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
    )
    with pytest.raises(ValueError, match="empty"):
        engine.add_request({"prompt_token_ids": []}, SamplingParams())
    with pytest.raises(ValueError, match="max_model_len"):
        engine.add_request({"prompt_token_ids": [1] * 40}, SamplingParams())
    with pytest.raises(ValueError, match="prompt_token_ids must lie"):
        engine.add_request({"prompt_token_ids": [10**6]}, SamplingParams())
    with pytest.raises(ValueError, match="no tokenizer"):
        engine.add_request("text needs a tokenizer", SamplingParams())
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=1.5)
    finished = []
    while engine.has_unfinished_requests():
        engine.step()
        finished += engine.pop_finished()
    assert [o.request_id for o in finished] == [good]
    assert len(finished[0].outputs[0].token_ids) == 4
    with pytest.raises(ValueError, match="no-such-model"):
        LLM(str(tmp_path / "no-such-model"))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((tiny.path / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes(
        (tiny.path / "model.safetensors").read_bytes()[:1000]
    )
    with pytest.raises(ValueError):
        LLM(str(corrupt))
