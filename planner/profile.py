"""Node capacity T(k): tokens/s of one GPU while it holds k layers, from a roofline cost model.

A measured `Profile` (the cluster file's `profiles:` section) replaces the model. The roofline
follows the Helix paper's accounting: a typical request has 750 prompt and 240 decode tokens, both
counted in the throughput, and the decode batch is limited by the KV cache left beside k layers of
weights. So k*T(k) falls as k grows: more weights leave less KV room, a smaller batch, and worse
amortisation.
"""

from __future__ import annotations

from dataclasses import dataclass

from .spec import GpuSpec, ModelSpec, Profile


@dataclass(frozen=True)
class CostModel:
    """Knobs of the roofline; every field has a unit or is a fraction."""

    prompt_tokens: int = 750
    """Prompt length of the typical request (the Helix paper's mean)."""
    decode_tokens: int = 240
    """Output length of the typical request."""
    weight_memory_fraction: float = 0.5
    """Share of GPU memory weights may take; the rest is KV cache and runtime (as in the paper)."""
    memory_utilization: float = 0.9
    """Share of GPU memory usable for weights plus KV cache."""
    compute_efficiency: float = 0.5
    """Achieved fraction of peak bf16 FLOP/s on matmuls."""
    bandwidth_efficiency: float = 0.8
    """Achieved fraction of peak memory bandwidth."""
    max_batch: int = 256
    """Upper bound on the resident decode batch."""

    def max_layers(self, gpu: GpuSpec, model: ModelSpec) -> int:
        """Layers whose weights fit in `weight_memory_fraction` of memory (capped at L)."""
        budget = gpu.memory_gb * 1e9 * self.weight_memory_fraction
        return min(model.num_layers, int(budget // model.layer_bytes))

    def decode_batch(self, gpu: GpuSpec, model: ModelSpec, num_layers: int) -> int:
        """Resident decode batch: requests whose full KV fits beside `num_layers` layers."""
        kv_free = gpu.memory_gb * 1e9 * self.memory_utilization - num_layers * model.layer_bytes
        per_request = (
            num_layers * model.kv_bytes_per_token_layer * (self.prompt_tokens + self.decode_tokens)
        )
        return max(1, min(self.max_batch, int(kv_free // per_request)))

    def decode_layer_s(self, gpu: GpuSpec, model: ModelSpec, batch: int) -> float:
        """Seconds for one decode step of `batch` sequences through one layer."""
        bandwidth = gpu.hbm_gbps * 1e9 * self.bandwidth_efficiency
        flops = gpu.bf16_tflops * 1e12 * self.compute_efficiency
        context = self.prompt_tokens + self.decode_tokens / 2
        memory_s = (
            model.layer_bytes + batch * context * model.kv_bytes_per_token_layer
        ) / bandwidth
        attention_flops = 4 * context * model.num_heads * model.head_size
        compute_s = batch * (model.flops_per_token_layer + attention_flops) / flops
        return max(memory_s, compute_s)

    def prompt_layer_s(self, gpu: GpuSpec, model: ModelSpec) -> float:
        """Seconds to prefill one typical prompt through one layer."""
        flops = gpu.bf16_tflops * 1e12 * self.compute_efficiency
        bandwidth = gpu.hbm_gbps * 1e9 * self.bandwidth_efficiency
        n = self.prompt_tokens
        attention_flops = 2 * n * n * model.num_heads * model.head_size
        return (n * model.flops_per_token_layer + attention_flops) / flops + (
            model.layer_bytes / bandwidth
        )

    def tokens_per_s(self, gpu: GpuSpec, model: ModelSpec, num_layers: int) -> float:
        """T(k): prompt plus decode tokens per second with k layers held."""
        batch = self.decode_batch(gpu, model, num_layers)
        per_request_layer_s = self.prompt_layer_s(gpu, model) + (
            self.decode_tokens * self.decode_layer_s(gpu, model, batch) / batch
        )
        return (self.prompt_tokens + self.decode_tokens) / (num_layers * per_request_layer_s)

    def profile(self, gpu: GpuSpec, model: ModelSpec) -> Profile | None:
        """The derived profile, or None when not even one layer fits."""
        max_layers = self.max_layers(gpu, model)
        if max_layers < 1:
            return None
        values = tuple(self.tokens_per_s(gpu, model, k) for k in range(1, max_layers + 1))
        return Profile(max_layers=max_layers, tokens_per_s=values)

    def token_latency_ms(self, gpu: GpuSpec, model: ModelSpec, num_layers: int) -> float:
        """Per-token decode latency through a node holding k layers, at its typical batch."""
        batch = self.decode_batch(gpu, model, num_layers)
        return 1e3 * num_layers * self.decode_layer_s(gpu, model, batch)


DEFAULT_COST_MODEL = CostModel()
