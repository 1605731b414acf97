"""ModelConfig: HF 4.x and 5.x config layouts, GGUF metadata, validation, no torch import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helix.runtime.model_config import ModelConfig

LLAMA3_4X = {
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "torch_dtype": "bfloat16",
    "hidden_act": "silu",
}


def test_llama3_4x_layout() -> None:
    config = ModelConfig.from_hf_dict(LLAMA3_4X)
    assert (config.head_dim, config.num_queries_per_kv) == (128, 4)
    assert config.rope_theta == 500000.0
    assert config.rope_scaling == {"rope_type": "llama3", **LLAMA3_4X["rope_scaling"]}
    assert config.eos_token_ids == (128001, 128008, 128009)
    assert config.dtype == "bfloat16"
    assert config.kv_bytes_per_token_per_layer == 2 * 8 * 128 * 2


def test_transformers_5_layout_of_every_tiny_model(tiny_models) -> None:
    for tiny in tiny_models.values():
        raw = json.loads((Path(tiny.path) / "config.json").read_text())
        config = ModelConfig.from_hf_dict(raw)
        assert config.num_layers == tiny.num_layers
        assert config.rope_theta == raw["rope_parameters"]["rope_theta"]
    qwen = ModelConfig.from_hf_dict(tiny_models["qwen2_tied"].hf_model.config.to_dict())
    assert (qwen.attention_bias, qwen.o_proj_bias, qwen.tie_word_embeddings) == (True, False, True)
    llama = tiny_models["llama_linear_tied_bias"].hf_model.config.to_dict()
    assert ModelConfig.from_hf_dict(llama).rope_scaling == {"rope_type": "linear", "factor": 2.0}


def test_qwen2_4x_layout_has_qkv_bias_only() -> None:
    raw = {**LLAMA3_4X, "model_type": "qwen2", "rope_scaling": None, "eos_token_id": 5}
    config = ModelConfig.from_hf_dict(raw)
    assert (config.attention_bias, config.o_proj_bias, config.rope_scaling) == (True, False, None)
    assert config.eos_token_ids == (5,)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"num_attention_heads": 0}, "num_heads"),
        ({"num_key_value_heads": 5}, "num_kv_heads"),
        ({"hidden_size": None}, "hidden_size"),
        ({"head_dim": 7}, "head_dim"),
        ({"rms_norm_eps": 0.0}, "rms_norm_eps"),
        ({"torch_dtype": "int8"}, "dtype"),
        ({"model_type": "gpt2"}, "model_type"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"eos_token_id": 999999}, "eos_token_ids"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
    ],
)
def test_validation_names_the_field(change, field) -> None:
    with pytest.raises(ValueError, match=field):
        ModelConfig.from_hf_dict({**LLAMA3_4X, **change})


def test_gguf_metadata() -> None:
    meta = {
        "general.architecture": "llama",
        "llama.block_count": 30,
        "llama.context_length": 8192,
        "llama.embedding_length": 576,
        "llama.feed_forward_length": 1536,
        "llama.attention.head_count": 9,
        "llama.attention.head_count_kv": 3,
        "llama.rope.freq_base": 100000.0,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "llama.vocab_size": 49152,
        "tokenizer.ggml.eos_token_id": 2,
    }
    config = ModelConfig.from_gguf_metadata(meta, tie_word_embeddings=True)
    assert (config.head_dim, config.num_kv_heads, config.eos_token_ids) == (64, 3, (2,))
    with pytest.raises(ValueError, match="general.architecture"):
        ModelConfig.from_gguf_metadata({**meta, "general.architecture": "gpt2"})
    with pytest.raises(ValueError, match="llama.block_count"):
        ModelConfig.from_gguf_metadata({**meta, "llama.block_count": None})


def test_config_module_imports_no_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import helix.runtime.model_config, helix.runtime.attention_metadata\n"
        "print(sorted(m for m in ('torch', 'gguf', 'numpy') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
