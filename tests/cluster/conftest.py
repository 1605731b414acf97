"""A tiny random Llama checkpoint and cluster files for the sharded-runtime tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cluster_fixtures import PARAMS, batch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=211, hidden_size=64, intermediate_size=97, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False, eos_token_id=2)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            param.copy_(1.0 + 0.2 * noise if name.endswith("norm.weight") else 0.3 * noise)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def reference(tiny_llama: Path) -> list[list[int]]:
    from helix import LLM

    outs = LLM(str(tiny_llama)).generate(batch(), PARAMS)
    ids = [o.outputs[0].token_ids for o in outs]
    assert len({tuple(x) for x in ids}) > 3  # the model is not degenerate: a real check
    return ids
