"""Build one engine node from an EngineConfig: weights, tokenizer, KV pool, scheduler, runner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .block_pool import BlockPool
from .engine_config import EngineConfig
from .kv_budget import num_kv_blocks
from .model_config import ModelConfig
from .model_runner import ModelRunner
from .scheduler import Scheduler, SchedulerConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_MODEL = "smollm2-135m"


@dataclass
class Node:
    model_config: ModelConfig
    tokenizer: Any
    scheduler: Scheduler
    runner: ModelRunner
    max_model_len: int
    num_kv_blocks: int


class _NullDetokenizer:
    def push(self, token_ids: object) -> str:
        return ""

    def flush(self) -> str:
        return ""


class NullTokenizer:
    """Stands in when a checkpoint has no tokenizer: prompts must be token ids, text stays ""."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        raise ValueError("this model has no tokenizer: pass {'prompt_token_ids': [...]}")

    def decode(self, ids: object, skip_special_tokens: bool = False) -> str:
        return ""

    def detokenizer(
        self, prompt_ids: object = (), skip_special_tokens: bool = False
    ) -> _NullDetokenizer:
        return _NullDetokenizer()

    def apply_chat_template(self, messages: object, add_generation_prompt: bool = True) -> str:
        raise ValueError("this model has no tokenizer or chat template")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda requested but no CUDA device is available")
    return torch.device(name)


def kv_block_bytes(
    config: ModelConfig, num_layers: int, block_size: int, dtype: torch.dtype
) -> int:
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * block_size * config.num_kv_heads * config.head_dim * element


def build_node(config: EngineConfig, start: int = 0, end: int | None = None) -> Node:
    from .loader import load_stage
    from .tokenizer import load_tokenizer

    device = resolve_device(config.device)
    dtype = _DTYPES[config.dtype]
    model = config.model or DEFAULT_MODEL
    stage, model_config = load_stage(
        model, start, end, dtype=dtype, attention_backend=config.attention_backend, device=device
    )
    try:
        tokenizer: Any = load_tokenizer(model)
    except (ValueError, OSError):
        tokenizer = NullTokenizer()  # a checkpoint without tokenizer files: token-id prompts only
    limit = min(model_config.max_position_embeddings, 8192)
    max_model_len = config.max_model_len or limit
    if max_model_len > model_config.max_position_embeddings:
        raise ValueError(
            f"max_model_len {max_model_len} exceeds the model's "
            f"{model_config.max_position_embeddings} positions"
        )
    num_blocks = config.num_kv_blocks or num_kv_blocks(
        kv_block_bytes(model_config, stage.num_local_layers, config.block_size, dtype),
        device,
        config.kv_cache_memory_gb,
        config.gpu_memory_utilization,
    )
    kv_caches = stage.allocate_kv_cache(num_blocks, config.block_size, dtype, device)
    pool = BlockPool(num_blocks, config.block_size, config.enable_prefix_caching)
    scheduler = Scheduler(
        SchedulerConfig(
            max_num_batched_tokens=config.max_num_batched_tokens,
            max_num_seqs=config.max_num_seqs,
            block_size=config.block_size,
            enable_chunked_prefill=config.enable_chunked_prefill,
            long_prefill_token_threshold=config.long_prefill_token_threshold,
            policy=config.scheduling_policy,
        ),
        pool,
    )
    graphs = None
    whole = stage.is_first and stage.is_last
    if (
        device.type == "cuda"
        and whole
        and not config.enforce_eager
        and stage.backend.cuda_graph_safe
    ):
        from .cuda_graphs import DecodeGraphs

        graphs = DecodeGraphs(
            stage, kv_caches, config.block_size, max_model_len, config.max_num_seqs
        )
    runner = ModelRunner(stage, kv_caches, config.block_size, device, graphs)
    return Node(model_config, tokenizer, scheduler, runner, max_model_len, num_blocks)
