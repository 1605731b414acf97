"""benchmarks/llamacpp.py's GGUF export (the llama.cpp column's weights) read back by helix's
GGUF loader gives the same greedy tokens as the safetensors folder it came from."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "llamacpp.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_llamacpp", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exported_gguf_round_trips(tmp_path) -> None:
    pytest.importorskip("gguf")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from helix import LLM, SamplingParams

    config = LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    gguf_path = _load_script().export_gguf(tmp_path, "float32")
    prompts = [{"prompt_token_ids": [5, 17, 250, 3, 99]}, {"prompt_token_ids": [42]}]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)

    def greedy(model: Path) -> list[list[int]]:
        return [o.outputs[0].token_ids for o in LLM(str(model)).generate(prompts, params)]

    assert greedy(gguf_path) == greedy(tmp_path)
