"""EngineConfig: everything one engine node needs, as vLLM names it (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass

from .sched_policy import POLICIES

_DTYPES = ("float32", "bfloat16", "float16")
_BLOCK_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class EngineConfig:
    model: str | None = None
    """Built-in name, HF checkpoint folder or GGUF file; None is the built-in smollm2-135m."""
    dtype: str = "float32"
    """Weights, activations and KV cache dtype."""
    device: str = "auto"
    """"cpu", "cuda" or "auto" (cuda when available)."""
    max_model_len: int | None = None
    """Context limit; None takes min(the model's, 8192)."""
    block_size: int = 16
    """Tokens per KV block."""
    kv_cache_memory_gb: float = 1.0
    """Memory for the KV cache (ignored when num_kv_blocks is given)."""
    gpu_memory_utilization: float | None = None
    """Fraction of the device's memory (host RAM on a CPU) this engine may fill, weights included;
    the KV cache gets what the weights leave of it. Overrides kv_cache_memory_gb when given."""
    num_kv_blocks: int | None = None
    """Exact KV pool size in blocks (tests use tiny pools to force preemption)."""
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    long_prefill_token_threshold: int = 0
    scheduling_policy: str = "fcfs"
    attention_backend: str = "auto"
    """Paged attention kernels: torch, triton or pallas; auto = triton on CUDA, torch on CPU."""
    enforce_eager: bool = False
    """Never replay decode steps from CUDA graphs (they are used on CUDA with a backend that
    allows them, such as triton)."""
    seed: int = 0
    """Seed of the shared sampling stream (requests without their own seed)."""

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.block_size not in _BLOCK_SIZES:
            raise ValueError(f"block_size must be one of {_BLOCK_SIZES}, got {self.block_size}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
        if not self.kv_cache_memory_gb > 0:
            raise ValueError(f"kv_cache_memory_gb must be > 0, got {self.kv_cache_memory_gb}")
        utilization = self.gpu_memory_utilization
        if utilization is not None and not 0 < utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {utilization}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}")
        for name in ("max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.scheduling_policy not in POLICIES:
            raise ValueError(
                f"scheduling_policy must be one of {sorted(POLICIES)}, "
                f"got {self.scheduling_policy!r}"
            )
        if self.attention_backend not in ("auto", "torch", "triton", "pallas"):
            raise ValueError(
                "attention_backend must be auto, torch, triton or pallas, "
                f"got {self.attention_backend!r}"
            )
