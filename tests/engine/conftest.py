"""Fixtures for the model, loader and tokenizer tests: tiny random HF checkpoints built once per
session with transformers, a hand-made paged KV layout, and the SmolLM2 GGUF tokenizers.

torch and transformers are imported inside the fixtures, so other tests in this folder that
need neither do not pay for them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}
# name -> (config class, kwargs): GQA everywhere, odd intermediate sizes, tied and untied heads.
TINY_SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama_llama3_untied": (
        "LlamaConfig",
        dict(
            vocab_size=211, hidden_size=64, intermediate_size=97, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rope_theta=500000.0, rope_scaling=LLAMA3_ROPE, tie_word_embeddings=False,
            rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=[2, 3],
        ),
    ),
    "llama_linear_tied_bias": (
        "LlamaConfig",
        dict(
            vocab_size=173, hidden_size=96, intermediate_size=131, num_hidden_layers=4,
            num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128,
            rope_theta=10000.0, rope_scaling={"rope_type": "linear", "factor": 2.0},
            tie_word_embeddings=True, attention_bias=True, bos_token_id=1, eos_token_id=2,
        ),
    ),
    "qwen2_tied": (
        "Qwen2Config",
        dict(
            vocab_size=150, hidden_size=64, intermediate_size=75, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=128,
            rope_theta=1000000.0, tie_word_embeddings=True, rms_norm_eps=1e-6,
            eos_token_id=0,
        ),
    ),
}  # fmt: skip


@dataclass
class TinyModel:
    name: str
    path: Path  # save_pretrained folder (config.json + model.safetensors)
    hf_model: Any  # the transformers model, fp32, eval mode
    num_layers: int


def _randomize(model: Any, seed: int) -> None:
    """Give every weight (norms and biases too) a distinct non-trivial value."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * noise)
            else:
                param.copy_(0.15 * noise)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyModel]:
    import torch
    import transformers

    models: dict[str, TinyModel] = {}
    for seed, (name, (config_cls, kwargs)) in enumerate(TINY_SPECS.items()):
        config = getattr(transformers, config_cls)(**kwargs)
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        _randomize(model, seed)
        model.eval()
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        models[name] = TinyModel(name, path, model, config.num_hidden_layers)
    return models


@pytest.fixture(scope="session")
def sharded_llama(tiny_models: dict[str, TinyModel], tmp_path_factory: pytest.TempPathFactory):
    tiny = tiny_models["llama_llama3_untied"]
    path = tmp_path_factory.mktemp("llama_sharded")
    tiny.hf_model.save_pretrained(path, max_shard_size="40KB")
    return TinyModel("llama_sharded", path, tiny.hf_model, tiny.num_layers)


@dataclass
class PagedLayout:
    """A hand-made block table: sequence b owns ``max_blocks`` shuffled physical blocks."""

    block_size: int
    block_tables: Any  # [B, M] int32

    def step(self, done: list[int], new: list[int]) -> tuple[Any, Any]:
        """``(positions [T], AttentionMetadata)`` for a step adding ``new[b]`` tokens after
        ``done[b]`` cached ones, sequences packed in order."""
        import torch

        from helix.runtime.attention_metadata import AttentionMetadata

        positions, slots, starts = [], [], [0]
        for b, (before, count) in enumerate(zip(done, new)):
            table = self.block_tables[b].tolist()
            for pos in range(before, before + count):
                positions.append(pos)
                slots.append(
                    table[pos // self.block_size] * self.block_size + pos % self.block_size
                )
            starts.append(starts[-1] + count)
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
            block_tables=self.block_tables,
            seq_lens=torch.tensor([d + n for d, n in zip(done, new)], dtype=torch.int32),
            query_start_loc=torch.tensor(starts, dtype=torch.int32),
            is_decode=all(n == 1 for n in new),
        )
        return torch.tensor(positions, dtype=torch.int64), meta


@pytest.fixture
def make_layout() -> Callable[..., PagedLayout]:
    def make(num_seqs: int, block_size: int = 4, max_blocks: int = 8, seed: int = 0):
        import torch

        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(num_seqs * max_blocks, generator=gen).to(torch.int32)
        return PagedLayout(block_size, perm.view(num_seqs, max_blocks))  # [B, M]

    return make


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    from helix.runtime.model_config import resolve_model_path

    try:
        return resolve_model_path("smollm2-135m")
    except ValueError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_gguf: Path):
    from helix.runtime.tokenizer import Tokenizer

    return Tokenizer.from_gguf(smollm2_gguf)


@pytest.fixture(scope="session")
def hf_smollm2_tokenizer(smollm2_gguf: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)


@pytest.fixture
def cpu_linear(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """``cpu_linear(mode)`` sets ``HELIX_CPU_LINEAR`` for this test (stages load their weights
    for the mode in force when they are built)."""
    from helix.runtime import linear

    def use(mode: str) -> None:
        monkeypatch.setenv("HELIX_CPU_LINEAR", mode)
        linear.cpu_linear_mode.cache_clear()

    yield use
    linear.cpu_linear_mode.cache_clear()
