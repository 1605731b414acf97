"""Triton backend vs the reference, on CPU through TRITON_INTERPRET=1 in a subprocess."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helix.kernels.testing import CASES, TOLERANCE, make_paged_case
from helix.kernels.triton_attention import triton_decode, triton_write_kv

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton not installed"
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
OPS = ["write_kv", "prefill", "decode", "decode_split4"]


@pytest.fixture(scope="module")
def interpret_errors() -> dict[str, dict[str, float]]:
    script = Path(__file__).with_name("_triton_interpret_run.py")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_triton
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype_name", sorted(DTYPES))
@pytest.mark.parametrize("case_name", sorted(CASES))
def test_matches_reference(interpret_errors, case_name: str, dtype_name: str, op: str) -> None:
    err = interpret_errors[f"{case_name}/{dtype_name}"][op]
    limit = 0.0 if op == "write_kv" else TOLERANCE[DTYPES[dtype_name]]
    assert err <= limit, f"{case_name}/{dtype_name} {op}: max error {err}"


@needs_triton
def test_kernels_compile_for_sm90() -> None:
    # No GPU needed: lowering to PTX catches what the interpreter cannot (dot limits, types).
    script = Path(__file__).with_name("_triton_compile_run.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert len(proc.stdout.splitlines()) == 5, proc.stdout


def test_cpu_tensors_need_interpret_mode(monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    case = make_paged_case([5], [5])
    with pytest.raises(ValueError, match="^k_cache: .*TRITON_INTERPRET"):
        triton_decode(
            case.q_decode, case.k_cache, case.v_cache, case.block_tables, case.seq_lens, case.scale
        )


def test_contiguity_is_checked_before_launch() -> None:
    case = make_paged_case([5], [5])
    strided_cache = case.k_cache.transpose(0, 1).contiguous().transpose(0, 1)
    with pytest.raises(ValueError, match="^k_cache: must be contiguous"):
        triton_write_kv(case.key, case.value, strided_cache, case.v_cache, case.slot_mapping)
    q_cols = case.q_decode.transpose(1, 2).contiguous().transpose(1, 2)  # last dim strided
    with pytest.raises(ValueError, match="^q: last dim must be contiguous"):
        triton_decode(q_cols, case.k_cache, case.v_cache, case.block_tables, case.seq_lens, 1.0)
    with pytest.raises(ValueError, match="^seq_lens: dtype"):
        triton_decode(
            case.q_decode, case.k_cache, case.v_cache, case.block_tables, case.seq_lens.long(), 1.0
        )
