"""benchmarks/kernels.py still runs (CPU: tiny shapes, torch only; CUDA: one small shape)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kernels.py"


def test_benchmark_smoke() -> None:
    args = ["--warmup=0", "--iters=1", "--backends=torch", "--batch-sizes=1", "--context-lens=256"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = [line for line in proc.stdout.splitlines() if line.startswith("torch")]
    assert rows, proc.stdout
