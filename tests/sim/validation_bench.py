"""Shared by the tests of benchmarks/sim_validation.py: the script loaded as a module, and the
per-layer tables (ms) its profile entries are built from."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType

PROMPT = {1: 0.5, 64: 2.0, 512: 10.0}
DECODE = {1: 0.4, 4: 0.5, 8: 0.8}
HEAD = {1: 3.0, 4: 4.0, 8: 6.0}


@functools.cache
def load_bench() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "sim_validation.py"
    spec = importlib.util.spec_from_file_location("helix_sim_validation_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
