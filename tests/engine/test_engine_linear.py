"""`helix.runtime.linear`: plain F.linear, fp32 slabs for bf16 weights, oneDNN-packed fp32 weights
(the `torch` and `onednn` modes; the native kernel's mode: test_engine_cpu_linear.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import helix.runtime.linear as linear_module
from helix.runtime.linear import UPCAST_MIN_ROWS, linear


def _inputs(rows: int, dtype: torch.dtype, bias: bool = True):
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 64, generator=gen).to(dtype)
    w = (0.1 * torch.randn(37, 64, generator=gen)).to(dtype)
    b = torch.randn(37, generator=gen).to(dtype) if bias else None
    return x, w, b


@pytest.fixture(autouse=True)
def _torch_mode(cpu_linear) -> None:
    cpu_linear("torch")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fp32_and_few_bf16_rows_are_plain_f_linear(dtype: torch.dtype) -> None:
    rows = 8 if dtype is torch.float32 else UPCAST_MIN_ROWS - 1
    x, w, b = _inputs(rows, dtype)
    assert torch.equal(linear(x, w, b), F.linear(x, w, b))


@pytest.mark.parametrize("bias", [True, False])
def test_upcast_equals_fp32_math_on_the_bf16_weights(monkeypatch, bias: bool) -> None:
    monkeypatch.setattr(linear_module, "_SLAB", 10 * 64)  # 37 rows: slabs of 10, 10, 10, 7
    x, w, b = _inputs(UPCAST_MIN_ROWS + 2, torch.bfloat16, bias)
    got = linear_module._upcast_linear(x, w, b)
    expected = F.linear(x.float(), w.float(), None if b is None else b.float()).bfloat16()
    assert got.dtype == torch.bfloat16 and got.shape == (UPCAST_MIN_ROWS + 2, 37)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_dispatch_follows_rows_dtype_and_cpu_support(monkeypatch) -> None:
    calls: list[int] = []

    def spy(x, w, b):
        calls.append(x.shape[0])
        return F.linear(x, w, b)

    monkeypatch.setattr(linear_module, "_upcast_linear", spy)
    monkeypatch.setattr(linear_module, "cpu_has_fast_bf16", lambda: False)
    for rows in (1, UPCAST_MIN_ROWS - 1, UPCAST_MIN_ROWS, 32):
        linear(*_inputs(rows, torch.bfloat16))
    linear(*_inputs(32, torch.float32))
    assert calls == [UPCAST_MIN_ROWS, 32]
    monkeypatch.setattr(linear_module, "cpu_has_fast_bf16", lambda: True)
    linear(*_inputs(32, torch.bfloat16))
    assert calls == [UPCAST_MIN_ROWS, 32]


@pytest.mark.parametrize("rows", [0, 1, 7, 300])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_fp32_weight_matches_f_linear(rows: int, bias: bool, cpu_linear) -> None:
    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch without oneDNN")
    cpu_linear("onednn")
    x, w, b = _inputs(rows, torch.float32, bias)
    packed = linear_module.pack_weight(w)
    assert packed.is_mkldnn and torch.equal(packed.to_dense(), w)
    torch.testing.assert_close(linear(x, packed, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    wide = torch.randn(rows, 128)[:, ::2]  # a strided view of the activations
    torch.testing.assert_close(linear(wide, packed, b), F.linear(wide, w, b), rtol=1e-5, atol=1e-5)


def test_only_fp32_cpu_weights_are_packed_in_the_onednn_mode(cpu_linear) -> None:
    _, w, _ = _inputs(1, torch.float32)
    assert linear_module.pack_weight(w) is w  # the torch mode (autouse fixture)
    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch without oneDNN")
    cpu_linear("onednn")
    bf16 = w.to(torch.bfloat16)
    assert linear_module.pack_weight(bf16) is bf16
    assert linear_module.pack_weight(w).is_mkldnn


def test_unknown_mode_is_named(cpu_linear) -> None:
    cpu_linear("fastest")
    with pytest.raises(ValueError, match=r"HELIX_CPU_LINEAR: 'fastest' is not one of auto"):
        linear(*_inputs(1, torch.float32))
