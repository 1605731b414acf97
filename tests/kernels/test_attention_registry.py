"""The attention backend registry: names, errors, and lazy imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helix.kernels import ATTENTION_BACKENDS, AttentionBackend, get_attention


def test_backend_names() -> None:
    assert ATTENTION_BACKENDS == ("torch", "triton", "pallas")


def test_unknown_backend_lists_choices() -> None:
    with pytest.raises(ValueError, match="'torch', 'triton', 'pallas'"):
        get_attention("flash")


@pytest.mark.parametrize("name", ["torch", "triton", "pallas"])
def test_get_attention_returns_backend(name: str) -> None:
    backend = get_attention(name)
    assert isinstance(backend, AttentionBackend)
    assert backend.name == name


def test_import_is_lazy() -> None:
    code = (
        "import sys, helix.kernels\n"
        "from helix.kernels import get_attention\n"
        "get_attention('triton'); get_attention('pallas')\n"
        "heavy = [m for m in ('triton', 'jax') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import helix.kernels.backend\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
