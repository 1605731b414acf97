"""LlamaStage against transformers: packed prefill, paged decode, chunked prefill, stage splits."""

from __future__ import annotations

import pytest
import torch

import helix.runtime.linear as linear_module
from helix.runtime.attention_metadata import AttentionMetadata
from helix.runtime.loader import load_stage
from helix.runtime.model import (
    LlamaStage,
    RMSNorm,
    apply_rope,
    rope_factors,
    rope_inv_freq,
)
from helix.runtime.model_config import ModelConfig

MODEL_NAMES = ["llama_llama3_untied", "llama_linear_tied_bias", "qwen2_tied"]
PROMPT_LENS = [7, 1, 13]  # mixed lengths, one a single token
NUM_DECODE_STEPS = 4
TOL = dict(rtol=1e-4, atol=1e-4)


def hf_logits(hf_model, ids: list[int]) -> torch.Tensor:  # [L, vocab]
    with torch.no_grad():
        return hf_model(input_ids=torch.tensor([ids])).logits[0].float()


def prompts(vocab_size: int, lens: list[int], seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab_size, (n,), generator=gen).tolist() for n in lens]


def run_stages(stages, caches, ids: torch.Tensor, positions, meta) -> torch.Tensor:
    """Push one step through consecutive stages; logits of every token, [T, vocab]."""
    x = ids
    with torch.inference_mode():
        for stage, cache in zip(stages, caches):
            x = stage(x, positions, cache, meta)
        return stages[-1].compute_logits(x)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_prefill_then_paged_decode_matches_hf(name, tiny_models, make_layout) -> None:
    tiny = tiny_models[name]
    stage, config = load_stage(tiny.path)
    layout = make_layout(len(PROMPT_LENS), block_size=4, max_blocks=6, seed=1)
    caches = [stage.allocate_kv_cache(6 * len(PROMPT_LENS), 4)]
    seqs = prompts(config.vocab_size, PROMPT_LENS)

    positions, meta = layout.step([0] * len(seqs), [len(s) for s in seqs])
    ids = torch.tensor([t for s in seqs for t in s])  # [T] packed back to back
    logits = run_stages([stage], caches, ids, positions, meta)  # [T, vocab]
    ends = meta.query_start_loc.tolist()
    for b, seq in enumerate(seqs):
        torch.testing.assert_close(
            logits[ends[b] : ends[b + 1]], hf_logits(tiny.hf_model, seq), **TOL
        )

    last = logits[[end - 1 for end in ends[1:]]]  # [B, vocab]
    for _ in range(NUM_DECODE_STEPS):
        for seq, token in zip(seqs, last.argmax(-1).tolist()):
            seq.append(token)
        positions, meta = layout.step([len(s) - 1 for s in seqs], [1] * len(seqs))
        assert meta.is_decode
        last = run_stages([stage], caches, torch.tensor([s[-1] for s in seqs]), positions, meta)
        for b, seq in enumerate(seqs):
            torch.testing.assert_close(last[b], hf_logits(tiny.hf_model, seq)[-1], **TOL)


def test_chunked_prefill_mixed_with_decode_matches_hf(tiny_models, make_layout) -> None:
    """A step holding one sequence's second prompt chunk and another's decode token."""
    tiny = tiny_models["llama_llama3_untied"]
    stage, config = load_stage(tiny.path)
    layout = make_layout(2, block_size=4, max_blocks=6, seed=2)
    caches = [stage.allocate_kv_cache(12, 4)]
    long, short = prompts(config.vocab_size, [14, 5], seed=3)

    positions, meta = layout.step([0, 0], [6, 5])  # first chunk of `long`, all of `short`
    logits = run_stages([stage], caches, torch.tensor(long[:6] + short), positions, meta)
    short.append(int(logits[-1].argmax()))
    positions, meta = layout.step([6, 5], [8, 1])  # rest of `long` + a decode token
    assert not meta.is_decode
    logits = run_stages([stage], caches, torch.tensor(long[6:] + short[-1:]), positions, meta)
    torch.testing.assert_close(logits[:8], hf_logits(tiny.hf_model, long)[6:], **TOL)
    torch.testing.assert_close(logits[8], hf_logits(tiny.hf_model, short)[-1], **TOL)


@pytest.mark.parametrize("name", ["llama_llama3_untied", "llama_linear_tied_bias"])
def test_two_stage_split_gives_same_logits(name, tiny_models, make_layout) -> None:
    tiny = tiny_models[name]
    full, config = load_stage(tiny.path)
    split = tiny.num_layers // 2
    first, _ = load_stage(tiny.path, 0, split)
    second, _ = load_stage(tiny.path, split)
    assert (first.is_first, first.is_last, second.is_first, second.is_last) == (1, 0, 0, 1)
    assert first.lm_head is None and second.model.embed_tokens is None
    layout = make_layout(2, block_size=4, max_blocks=4, seed=4)
    seqs = prompts(config.vocab_size, [9, 4], seed=5)
    full_caches = [full.allocate_kv_cache(8, 4)]
    split_caches = [first.allocate_kv_cache(8, 4), second.allocate_kv_cache(8, 4)]
    assert len(split_caches[0]) == split and len(split_caches[1]) == tiny.num_layers - split

    done = [0, 0]
    step_ids = torch.tensor([t for s in seqs for t in s])
    new = [len(s) for s in seqs]
    for _ in range(3):  # prefill, then two decode steps
        positions, meta = layout.step(done, new)
        want = run_stages([full], full_caches, step_ids, positions, meta)
        got = run_stages([first, second], split_caches, step_ids, positions, meta)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        done = [d + n for d, n in zip(done, new)]
        ends = meta.query_start_loc[1:] - 1
        step_ids, new = want[ends].argmax(-1), [1, 1]


def test_parameter_names_match_hf_and_keep_global_index(tiny_models) -> None:
    tiny = tiny_models["llama_llama3_untied"]
    config = ModelConfig.from_hf_dict(tiny.hf_model.config.to_dict())
    stage = LlamaStage(config, 1, 3)
    hf_names = set(tiny.hf_model.state_dict())
    names = set(stage.state_dict())
    assert names <= hf_names
    assert {n for n in hf_names if ".layers.1." in n or ".layers.2." in n} | {
        "model.norm.weight",
        "lm_head.weight",
    } == names


def test_tied_stage_shares_embedding(tiny_models) -> None:
    stage, _ = load_stage(tiny_models["qwen2_tied"].path)
    assert stage.lm_head is not None and stage.model.embed_tokens is not None
    head, embed = stage.lm_head.weight, stage.model.embed_tokens.weight
    if head.is_mkldnn:  # fp32 on the CPU: the head is a packed copy of the embedding
        assert torch.equal(head.to_dense(), embed)
    else:
        assert head is embed


@pytest.mark.parametrize("mode", ["torch", "auto"])
def test_unpacked_tied_stage_shares_embedding(tiny_models, cpu_linear, mode) -> None:
    """Plain weights (the torch mode, and the native kernel's where it is built)."""
    cpu_linear(mode)
    if mode == "auto" and linear_module.cpu_linear_mode() != "native":
        pytest.skip("no native CPU kernel here: auto packs for oneDNN")
    stage, _ = load_stage(tiny_models["qwen2_tied"].path)
    assert stage.lm_head is not None and stage.model.embed_tokens is not None
    assert stage.lm_head.weight is stage.model.embed_tokens.weight
    assert not any(p.is_mkldnn for p in stage.parameters())


def test_packed_weights_match_plain_ones(tiny_models, cpu_linear) -> None:
    """fp32 CPU stages in the onednn mode run packed projections; logits agree with plain
    weights to fp32 noise."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch without oneDNN: nothing is packed")
    path = tiny_models["llama_llama3_untied"].path
    cpu_linear("onednn")
    packed, config = load_stage(path)
    cpu_linear("torch")
    plain, _ = load_stage(path)
    layer = packed.model.layers["0"]
    assert layer.mlp.gate_up_proj.weight.is_mkldnn and packed.lm_head.weight.is_mkldnn
    plain_gate_up = plain.model.layers["0"].mlp.gate_up_proj.weight
    assert torch.equal(layer.mlp.gate_up_proj.weight.to_dense(), plain_gate_up)
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, config.hidden_size, generator=gen)
    torch.testing.assert_close(
        packed.compute_logits(hidden), plain.compute_logits(hidden), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("name", ["qwen2_tied", "llama_llama3_untied"])
def test_loaded_stage_stacks_projections(tiny_models, name, cpu_linear) -> None:
    """Loading stacks q/k/v (with Qwen2's biases) and gate/up in the checkpoint's order."""
    cpu_linear("torch")
    tiny = tiny_models[name]
    stage, _ = load_stage(tiny.path)
    hf_layer = tiny.hf_model.model.layers[1]
    attn, mlp = stage.model.layers["1"].self_attn, stage.model.layers["1"].mlp
    assert attn.q_proj is attn.k_proj is attn.v_proj is None
    assert mlp.gate_proj is mlp.up_proj is None
    hf_attn = hf_layer.self_attn
    qkv = [hf_attn.q_proj, hf_attn.k_proj, hf_attn.v_proj]
    assert torch.equal(attn.qkv_proj.weight, torch.cat([p.weight for p in qkv]))
    if hf_attn.q_proj.bias is not None:
        assert torch.equal(attn.qkv_proj.bias, torch.cat([p.bias for p in qkv]))
    else:
        assert attn.qkv_proj.bias is None
    gate_up = torch.cat([hf_layer.mlp.gate_proj.weight, hf_layer.mlp.up_proj.weight])
    assert torch.equal(mlp.gate_up_proj.weight, gate_up)


def test_llama3_inv_freq_matches_hf(tiny_models) -> None:
    hf_model = tiny_models["llama_llama3_untied"].hf_model
    config = ModelConfig.from_hf_dict(hf_model.config.to_dict())
    hf_inv_freq = hf_model.model.rotary_emb.inv_freq
    assert torch.equal(rope_inv_freq(config), hf_inv_freq)
    assert not torch.equal(hf_inv_freq, 1.0 / (500000.0 ** (torch.arange(0, 16, 2) / 16)))


def test_forward_and_logits_validate_inputs(tiny_models, make_layout) -> None:
    tiny = tiny_models["llama_llama3_untied"]
    first, _ = load_stage(tiny.path, 0, 1)
    positions, meta = make_layout(1).step([0], [3])
    caches = first.allocate_kv_cache(8, 4)
    with pytest.raises(ValueError, match="kv_caches"):
        first(torch.tensor([1, 2, 3]), positions, caches + caches, meta)
    with pytest.raises(ValueError, match="input_ids"):
        first(torch.zeros(3, 64), positions, caches, meta)
    with pytest.raises(ValueError, match="not the last"):
        first.compute_logits(torch.zeros(1, 64))
    second, _ = load_stage(tiny.path, 1, 2)
    with pytest.raises(ValueError, match="hidden"):
        second(torch.tensor([1, 2, 3]), positions, second.allocate_kv_cache(8, 4), meta)
    with pytest.raises(ValueError, match="layer range"):
        LlamaStage(first.config, 2, 2)
    with pytest.raises(RuntimeError, match="no weights loaded"):
        LlamaStage(first.config, 0, 1)(torch.tensor([1, 2, 3]), positions, caches, meta)


def test_bfloat16_stage_runs_and_stays_close(tiny_models, make_layout) -> None:
    tiny = tiny_models["qwen2_tied"]
    stage, config = load_stage(tiny.path, dtype=torch.bfloat16)
    assert stage.model.layers["0"].self_attn.qkv_proj.weight.dtype == torch.bfloat16
    (seq,) = prompts(config.vocab_size, [6], seed=6)
    positions, meta = make_layout(1).step([0], [6])
    caches = [stage.allocate_kv_cache(8, 4)]
    assert caches[0][0][0].dtype == torch.bfloat16
    logits = run_stages([stage], caches, torch.tensor(seq), positions, meta)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, hf_logits(tiny.hf_model, seq), rtol=0.1, atol=0.1)


def test_attention_metadata_counts() -> None:
    meta = AttentionMetadata(
        slot_mapping=torch.arange(5),
        block_tables=torch.zeros(2, 2, dtype=torch.int32),
        seq_lens=torch.tensor([3, 2], dtype=torch.int32),
        query_start_loc=torch.tensor([0, 3, 5], dtype=torch.int32),
        is_decode=False,
    )
    assert (meta.num_seqs, meta.num_tokens) == (2, 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rope_rounds_exactly_like_hf_rotate_half(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 8, generator=gen).to(dtype)  # [T, heads, D]
    angles = torch.randn(5, 4, generator=gen)  # [T, D/2]
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    x1, x2 = x.chunk(2, dim=-1)
    cos_hf, sin_hf = torch.cat((cos, cos), -1)[:, None], torch.cat((sin, sin), -1)[:, None]
    expected = (
        x * cos_hf + torch.cat((-x2, x1), dim=-1) * sin_hf
    )  # HF: q * cos + rotate_half(q) * sin
    assert torch.equal(apply_rope(x, *rope_factors(cos, sin)), expected)


@pytest.mark.parametrize("hidden", [64, 96, 576, 768])
def test_rmsnorm_fast_path_rounds_like_hf(hidden: int) -> None:
    gen = torch.Generator().manual_seed(hidden)
    norm = RMSNorm(hidden, 1e-5, torch.float32)
    norm.weight.copy_(1 + 0.2 * torch.randn(hidden, generator=gen))
    x = 3 * torch.randn(7, hidden, generator=gen)
    expected = norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    assert torch.equal(norm(x), expected)
