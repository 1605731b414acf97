"""A Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM2) cut to one pipeline stage.

``LlamaStage(config, start, end)`` holds decoder layers ``[start, end)``, plus the embedding when
``start == 0`` and the final norm and LM head when ``end == num_layers``:

    layer index   0 ........ start-1 | start ........ end-1 | end ........ num_layers-1
                  (earlier stages)   | this stage          | (later stages)

Parameter names match Hugging Face's (``model.layers.{i}.self_attn.q_proj.weight``, with ``i``
the GLOBAL layer index), so loading a checkpoint is a name lookup. Attention goes through a
paged ``helix.kernels`` backend; the KV cache lives outside the module, one ``(k, v)`` pair per
local layer, each ``[num_blocks, block_size, num_kv_heads, head_dim]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from helix.kernels import AttentionBackend, get_attention

from .attention_metadata import AttentionMetadata
from .linear import linear, pack_weight
from .model_config import ModelConfig

KVCache = tuple[torch.Tensor, torch.Tensor]  # ([num_blocks, block_size, Hkv, D],) * 2


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32, scaled in the input dtype (as HF Llama does)."""

    def __init__(self, size: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [T, hidden]
        if x.dtype is self.weight.dtype is torch.float32 and x.device.type == "cpu":
            # One op instead of six; on the CPU it rounds exactly as the steps below.
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        out: torch.Tensor = self.weight * x32.to(x.dtype)
        return out


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:  # [head_dim // 2] fp32
    """Inverse RoPE frequencies, with ``linear`` or ``llama3`` scaling applied."""
    dim = config.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    inv_freq = 1.0 / (config.rope_theta**exponents)  # [D/2]
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    if scaling["rope_type"] == "linear":
        return inv_freq / float(scaling["factor"])
    # llama3 (HF ``_compute_llama3_parameters``): keep high frequencies, divide low ones by
    # ``factor``, and blend linearly in wavelength between the two cut-offs.
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    context = scaling["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = context / low, context / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (context / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, blended, scaled)


def rope_factors(
    cos: torch.Tensor,  # [T, D/2]
    sin: torch.Tensor,  # [T, D/2]
) -> tuple[torch.Tensor, torch.Tensor]:  # [T, 1, D] each
    """``(cos | cos)`` and ``(-sin | sin)``, built once per step for every ``apply_rope``."""
    return torch.cat((cos, cos), dim=-1)[:, None], torch.cat((-sin, sin), dim=-1)[:, None]


def apply_rope(
    x: torch.Tensor,  # [T, heads, D]
    cos: torch.Tensor,  # [T, 1, D] from rope_factors, x's dtype
    sin: torch.Tensor,  # [T, 1, D] from rope_factors, x's dtype
) -> torch.Tensor:  # [T, heads, D]
    """Rotate-half RoPE: dims i and i + D/2 form one rotated pair (HF Llama convention).

    ``x * (cos | cos) + (x2 | x1) * (-sin | sin)`` rounds exactly as HF's
    ``x * cos + rotate_half(x) * sin``, in four ops instead of seven.
    """
    tokens, heads, dim = x.shape
    swapped = x.reshape(tokens, heads, 2, dim // 2).flip(2).view(tokens, heads, dim)
    return swapped.mul_(sin).add_(x * cos)


def _linear(in_features: int, out_features: int, bias: bool, dtype: torch.dtype) -> nn.Linear:
    layer = nn.Linear(in_features, out_features, bias=bias, dtype=dtype)
    layer.requires_grad_(False)
    return layer


def _stack(*layers: nn.Linear) -> nn.Linear:
    """One projection whose output is the given ones' outputs side by side (weights stacked on
    the output dimension). Each output is the same dot product as before; only the GEMM's
    blocking may order its sums differently (last-bit differences at most)."""
    weights: list[torch.Tensor] = [layer.weight for layer in layers]
    weight = torch.cat(weights)  # [sum(out), in]
    stacked = nn.Linear(
        weight.shape[1], weight.shape[0], bias=layers[0].bias is not None, device="meta"
    ).requires_grad_(False)
    stacked.weight = nn.Parameter(weight, requires_grad=False)
    biases: list[torch.Tensor] = [layer.bias for layer in layers if layer.bias is not None]
    if biases:
        stacked.bias = nn.Parameter(torch.cat(biases), requires_grad=False)  # [sum(out)]
    return stacked


def _project(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` without the module call, through ``linear`` (bf16 dispatch on the CPU)."""
    return linear(x, layer.weight, layer.bias)


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, backend: AttentionBackend, dtype: torch.dtype) -> None:
        super().__init__()
        hidden, d = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, d
        self.scale = d**-0.5
        self.backend = backend
        qkv_bias = config.attention_bias
        self.q_proj: nn.Linear | None = _linear(hidden, self.num_heads * d, qkv_bias, dtype)
        self.k_proj: nn.Linear | None = _linear(hidden, self.num_kv_heads * d, qkv_bias, dtype)
        self.v_proj: nn.Linear | None = _linear(hidden, self.num_kv_heads * d, qkv_bias, dtype)
        self.o_proj = _linear(self.num_heads * d, hidden, config.o_proj_bias, dtype)
        self.qkv_proj: nn.Linear | None = None
        """q, k and v stacked into one projection by ``fuse``, once loaded (they are then None)."""

    def fuse(self) -> None:
        """Stack q_proj, k_proj and v_proj into ``qkv_proj``: one GEMM a step instead of three."""
        if self.q_proj is not None and self.k_proj is not None and self.v_proj is not None:
            self.qkv_proj = _stack(self.q_proj, self.k_proj, self.v_proj)
            self.q_proj = self.k_proj = self.v_proj = None

    def forward(
        self,
        x: torch.Tensor,  # [T, hidden]
        cos: torch.Tensor,  # [T, 1, D] from rope_factors
        sin: torch.Tensor,  # [T, 1, D] from rope_factors
        kv_cache: KVCache,
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [T, hidden]
        if self.qkv_proj is None:
            raise RuntimeError("LlamaAttention: no weights loaded (LlamaStage.load_weights)")
        heads = (self.num_heads, self.num_kv_heads, self.num_kv_heads)
        num_tokens = x.shape[0]
        qkv = _project(self.qkv_proj, x).view(num_tokens, sum(heads), self.head_dim)
        q, k, v = qkv.split_with_sizes(heads, dim=1)  # views: [T, H, D], [T, Hkv, D] x 2
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k_cache, v_cache = kv_cache
        tables, lens, starts = meta.block_tables, meta.seq_lens, meta.query_start_loc
        self.backend.write_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        if meta.is_decode:  # [B == T, H, D]
            out = self.backend.decode(q, k_cache, v_cache, tables, lens, self.scale)
        else:  # [T, H, D]
            out = self.backend.prefill(q, k_cache, v_cache, tables, starts, lens, self.scale)
        return _project(self.o_proj, out.reshape(num_tokens, -1))  # [T, H * D] -> [T, hidden]


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype) -> None:
        super().__init__()
        hidden, inter, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj: nn.Linear | None = _linear(hidden, inter, bias, dtype)
        self.up_proj: nn.Linear | None = _linear(hidden, inter, bias, dtype)
        self.down_proj = _linear(inter, hidden, bias, dtype)
        self.gate_up_proj: nn.Linear | None = None
        """gate and up stacked into one projection by ``fuse``, once loaded (they are then None)."""

    def fuse(self) -> None:
        """Stack gate_proj and up_proj into ``gate_up_proj``: one GEMM a step instead of two."""
        if self.gate_proj is not None and self.up_proj is not None:
            self.gate_up_proj = _stack(self.gate_proj, self.up_proj)
            self.gate_proj = self.up_proj = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [T, hidden]
        if self.gate_up_proj is None:
            raise RuntimeError("LlamaMLP: no weights loaded (LlamaStage.load_weights)")
        gate, up = _project(self.gate_up_proj, x).chunk(2, dim=-1)  # [T, intermediate] x 2
        return _project(self.down_proj, F.silu(gate).mul_(up))  # -> [T, hidden]


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, backend: AttentionBackend, dtype: torch.dtype) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.self_attn = LlamaAttention(config, backend, dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.mlp = LlamaMLP(config, dtype)

    def forward(
        self,
        h: torch.Tensor,  # [T, hidden], residual stream
        cos: torch.Tensor,  # [T, 1, D] from rope_factors
        sin: torch.Tensor,  # [T, 1, D] from rope_factors
        kv_cache: KVCache,
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [T, hidden]
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, kv_cache, meta)
        out: torch.Tensor = h + self.mlp(self.post_attention_layernorm(h))
        return out


class _LlamaBody(nn.Module):
    """HF's ``model.`` prefix: optional embedding, the local layers, optional final norm."""

    def __init__(
        self, config: ModelConfig, layers: range, backend: AttentionBackend, dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.embed_tokens: nn.Embedding | None = None
        self.norm: RMSNorm | None = None
        if layers.start == 0:
            # ``_weight`` skips the random init (which on meta imports torch._refs: ~3 s).
            weight = torch.empty(config.vocab_size, config.hidden_size, dtype=dtype)
            self.embed_tokens = nn.Embedding(
                config.vocab_size, config.hidden_size, _weight=weight, _freeze=True
            )
        # NOTE(engine): keys are global layer indices, so names match the checkpoint.
        self.layers = nn.ModuleDict(
            {str(i): LlamaDecoderLayer(config, backend, dtype) for i in layers}
        )
        if layers.stop == config.num_layers:
            self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)


class LlamaStage(nn.Module):
    """Decoder layers ``[start, end)`` of a Llama-family model; see the module docstring."""

    rope_cos: torch.Tensor  # [max_positions, D/2] fp32 buffer
    rope_sin: torch.Tensor  # [max_positions, D/2] fp32 buffer

    def __init__(
        self,
        config: ModelConfig,
        start: int,
        end: int,
        attention_backend: str = "torch",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if not 0 <= start < end <= config.num_layers:
            raise ValueError(
                f"layer range: need 0 <= start < end <= {config.num_layers}, got [{start}, {end})"
            )
        self.config, self.start, self.end, self.dtype = config, start, end, dtype
        self.backend = get_attention(attention_backend)
        self.model = _LlamaBody(config, range(start, end), self.backend, dtype)
        self.lm_head: nn.Linear | None = None
        if self.is_last:
            self.lm_head = _linear(config.hidden_size, config.vocab_size, False, dtype)
        self.tie_weights()
        # NOTE(engine): the tables are built on the CPU explicitly so a stage constructed under
        # ``torch.device("meta")`` (the loader does) still gets real values.
        freqs = torch.outer(
            torch.arange(config.max_position_embeddings, device="cpu").float(),
            rope_inv_freq(config),
        )  # [max_positions, D/2] fp32
        self.register_buffer("rope_cos", freqs.cos(), persistent=False)
        self.register_buffer("rope_sin", freqs.sin(), persistent=False)

    @property
    def is_first(self) -> bool:
        return self.start == 0

    @property
    def is_last(self) -> bool:
        return self.end == self.config.num_layers

    @property
    def num_local_layers(self) -> int:
        return self.end - self.start

    def tie_weights(self) -> None:
        """Share the LM head with the embedding when the model ties them and both live here."""
        embed = self.model.embed_tokens
        if self.config.tie_word_embeddings and self.lm_head is not None and embed is not None:
            self.lm_head.weight = embed.weight

    def checkpoint_names(self) -> dict[str, str]:
        """``{parameter name: checkpoint tensor name}`` for every tensor this stage needs.

        A tied LM head reads the embedding tensor (``model.embed_tokens.weight``), also when
        this last stage does not hold the embedding itself.
        """
        names = {name: name for name, _ in self.named_parameters()}  # shared params once
        if self.config.tie_word_embeddings and "lm_head.weight" in names:
            names["lm_head.weight"] = "model.embed_tokens.weight"
        return names

    def load_weights(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Replace every parameter by ``tensors[name]`` (names from ``checkpoint_names``)."""
        expected = dict(self.named_parameters())
        missing = sorted(set(expected) - set(tensors))
        if missing:
            raise ValueError(f"load_weights: missing {len(missing)} tensors, e.g. {missing[:4]}")
        state: dict[str, torch.Tensor] = {}
        for name, param in expected.items():
            tensor = tensors[name]
            if tuple(tensor.shape) != tuple(param.shape):
                raise ValueError(
                    f"{name}: shape {tuple(tensor.shape)} != expected {tuple(param.shape)}"
                )
            state[name] = tensor.to(self.dtype)
        if self.config.tie_word_embeddings and self.is_first and self.is_last:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        self.load_state_dict(state, strict=True, assign=True)
        self.requires_grad_(False)
        self.tie_weights()
        self.fuse_projections()

    def fuse_projections(self) -> None:
        """Stack each layer's q/k/v and gate/up projections (at load time, after which the
        parameter names no longer match the checkpoint's): 4 GEMMs per layer instead of 7.
        The bytes read are the same; a decode step saves the extra calls and thread hand-offs."""
        for layer in self.model.layers.values():
            assert isinstance(layer, LlamaDecoderLayer)
            layer.self_attn.fuse()
            layer.mlp.fuse()

    def pack_weights(self) -> None:
        """Reorder every projection's fp32 CPU weight for oneDNN (``linear.pack_weight``), once,
        after loading. A tied LM head gets a packed copy of the embedding (which the lookup
        still reads plain): vocab x hidden more memory."""
        for layer in [m for m in self.modules() if isinstance(m, nn.Linear)]:
            weight = pack_weight(layer.weight)
            if weight is not layer.weight:
                layer.weight = nn.Parameter(weight, requires_grad=False)

    def allocate_kv_cache(
        self,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> list[KVCache]:
        """Zeroed ``(k, v)`` caches, ``[num_blocks, block_size, Hkv, D]`` each, per local layer."""
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(f"kv cache: need positive sizes, got {num_blocks=} {block_size=}")
        shape = (num_blocks, block_size, self.config.num_kv_heads, self.config.head_dim)
        dtype, device = dtype or self.dtype, device or self.rope_cos.device

        def zeros() -> torch.Tensor:  # [num_blocks, block_size, Hkv, D]
            return torch.zeros(shape, dtype=dtype, device=device)

        return [(zeros(), zeros()) for _ in range(self.num_local_layers)]

    def forward(
        self,
        input_ids_or_hidden: torch.Tensor,  # [T] int64 on the first stage, else [T, hidden]
        positions: torch.Tensor,  # [T] int64
        kv_caches: list[KVCache],  # one per local layer
        meta: AttentionMetadata,
        first_layer: int | None = None,
    ) -> torch.Tensor:  # [T, hidden], residual stream after layer end - 1 (before final norm)
        """`first_layer` > start runs only the tail of the range (partial inference): the input is
        then the hidden state after layer first_layer - 1, computed by another node."""
        if len(kv_caches) != self.num_local_layers:
            raise ValueError(
                f"kv_caches: {len(kv_caches)} given, stage has {self.num_local_layers} layers"
            )
        first = self.start if first_layer is None else first_layer
        if not self.start <= first < self.end:
            raise ValueError(f"first_layer: {first} outside the stage's [{self.start}, {self.end})")
        x = input_ids_or_hidden
        if self.model.embed_tokens is not None and first == self.start:
            if x.dim() != 1:
                raise ValueError(f"input_ids: first stage expects [T] ids, got {tuple(x.shape)}")
            h: torch.Tensor = self.model.embed_tokens(x)  # [T, hidden]
        else:
            if x.dim() != 2 or x.shape[1] != self.config.hidden_size:
                raise ValueError(
                    f"hidden: expected [T, {self.config.hidden_size}], got {tuple(x.shape)}"
                )
            h = x.to(self.dtype)  # [T, hidden]
        cos, sin = rope_factors(
            self.rope_cos[positions].to(h.dtype), self.rope_sin[positions].to(h.dtype)
        )  # [T, 1, D] each
        layers = list(self.model.layers.values())[first - self.start :]
        for layer, kv_cache in zip(layers, kv_caches[first - self.start :]):
            h = layer(h, cos, sin, kv_cache, meta)
        return h

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[N, hidden]`` residual rows -> ``[N, vocab]`` fp32 logits (last stage only)."""
        if self.lm_head is None or self.model.norm is None:
            raise ValueError(f"compute_logits: stage [{self.start}, {self.end}) is not the last")
        return _project(self.lm_head, self.model.norm(hidden)).float()  # [N, vocab]
