"""The native CPU projection kernel (kernels/_cpu_ops.c) and the `native` mode of `linear`.

Built by `pip install` where a C compiler is at hand; on an x86-64 CPU with AVX2 and FMA these
tests fail when it is missing (set HELIX_NO_CPU_LINEAR=1 to skip them on a build without it).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import helix.runtime.linear as linear_module
from helix.kernels.cpu_native import native_ops
from helix.kernels.testing import expects_native_kernels
from helix.runtime.linear import NATIVE_MAX_ROWS, linear

if not expects_native_kernels():
    pytest.skip("native CPU kernel not expected here", allow_module_level=True)


@pytest.fixture
def kernel():
    module = native_ops()
    assert module is not None, (
        "helix.kernels._cpu_ops is not built or did not bind torch's OpenMP runtime: "
        "reinstall (pip install -e .) with a C compiler"
    )
    return module


@pytest.fixture(autouse=True)
def _native_mode(cpu_linear) -> None:
    cpu_linear("native")


def _inputs(rows: int, in_features: int, out_features: int, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, in_features, generator=gen).to(dtype)
    w = (torch.randn(out_features, in_features, generator=gen) / in_features**0.5).to(dtype)
    b = torch.randn(out_features, generator=gen).to(dtype)
    return x, w, b


def _exact(x, w, b):  # float64 ground truth
    out = x.double() @ w.double().T
    return out if b is None else out + b.double()


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 32, NATIVE_MAX_ROWS])
@pytest.mark.parametrize("in_features", [5, 8, 64, 771])  # K < 8, K % 8 == 0, a K tail
@pytest.mark.parametrize("out_features", [1, 3, 37, 130])  # < one 4-row block, > 2 thread parts
def test_fp32_matches_exact_products(rows, in_features, out_features) -> None:
    x, w, b = _inputs(rows, in_features, out_features)
    for bias in (b, None):
        got = linear(x, w, bias)
        assert got.dtype == torch.float32 and got.shape == (rows, out_features)
        torch.testing.assert_close(got.double(), _exact(x, w, bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 3, 9, 64])
def test_bf16_matches_torch_bf16_linear(rows) -> None:
    """bf16 weights are widened exactly and summed in fp32, the output rounded once: within one
    bf16 rounding of torch's own bf16 linear (in practice bit-identical on these shapes)."""
    x, w, b = _inputs(rows, 771, 130, torch.bfloat16)
    got = linear(x, w, b)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, F.linear(x, w, b))
    exact = _exact(x, w, b)
    assert ((got.double() - exact).abs() <= exact.abs() * 2**-8 + 1e-6).all()


def test_strided_activations_and_weight_rows(kernel) -> None:
    x, w, b = _inputs(3, 128, 40)
    wide_x = torch.randn(3, 256)[:, ::2].copy_(x)  # columns with stride 2
    padded_w = torch.zeros(40, 160)
    padded_w[:, :128] = w
    view_w = padded_w[:, :128]  # rows with stride 160
    got = linear(wide_x, view_w, b).double()
    torch.testing.assert_close(got, _exact(x, w, b), rtol=1e-5, atol=1e-5)


def test_threads_split_outputs_without_changing_them(kernel) -> None:
    """Each output is one thread's dot product: any thread count gives the same bits."""
    x, w, b = _inputs(5, 300, 1000)
    outs = []
    for threads in (1, 2, 3):
        y = torch.empty(5, 1000)
        kernel.linear(
            x.data_ptr(), w.data_ptr(), b.data_ptr(), y.data_ptr(),
            5, 300, 1000, 300, 300, 1000, threads, False,
        )  # fmt: skip
        outs.append(y)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_kernel_runs_on_torchs_openmp_runtime(kernel) -> None:
    lib = os.path.realpath(os.path.join(os.path.dirname(torch.__file__), "lib")) + os.sep
    path = kernel.bind_openmp(lib)
    assert path is not None and os.path.realpath(path).startswith(lib)


def test_bad_shapes_are_named(kernel) -> None:
    x, w, _ = _inputs(2, 16, 8)
    with pytest.raises(ValueError, match="input has 16 features, weight expects 12"):
        linear(x, w[:, :12].contiguous(), None)
    with pytest.raises(ValueError, match="bad shape"):
        kernel.linear(x.data_ptr(), w.data_ptr(), 0, 0, 2, 16, 8, 16, 16, 8, 1, False)


def test_dispatch(kernel, monkeypatch) -> None:
    """Native up to NATIVE_MAX_ROWS rows of fp32 (and bf16 without a bf16 GEMM), F.linear
    above; other dtypes, other devices' tensors and non-unit-stride weights go to torch."""
    calls: list[tuple[int, torch.dtype]] = []
    real = linear_module._native_linear

    def spy(x, w, b):
        calls.append((x.shape[0], x.dtype))
        return real(x, w, b)

    monkeypatch.setattr(linear_module, "_native_linear", spy)
    monkeypatch.setattr(linear_module, "cpu_has_fast_bf16", lambda: False)
    for rows in (1, NATIVE_MAX_ROWS, NATIVE_MAX_ROWS + 1):
        x, w, b = _inputs(rows, 64, 37)
        torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    x, w, b = _inputs(4, 64, 37, torch.bfloat16)
    linear(x, w, b)
    linear(x.double(), w.double(), b.double())
    linear(x.float(), w.float().t().contiguous().t(), None)  # column-major weight
    assert calls == [(1, torch.float32), (NATIVE_MAX_ROWS, torch.float32), (4, torch.bfloat16)]
    monkeypatch.setattr(linear_module, "cpu_has_fast_bf16", lambda: True)
    linear(x, w, b)  # a CPU with its own bf16 GEMM keeps it
    assert len(calls) == 3


def test_native_mode_keeps_weights_plain(kernel) -> None:
    _, w, _ = _inputs(1, 64, 37)
    assert linear_module.cpu_linear_mode() == "native"
    assert linear_module.pack_weight(w) is w


def test_auto_picks_the_kernel(kernel, cpu_linear) -> None:
    cpu_linear("auto")
    assert linear_module.cpu_linear_mode() == "native"
