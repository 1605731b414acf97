"""KV cache sizing: a fixed size, or a fraction of the device's memory after the weights."""

from __future__ import annotations

import pytest

from helix.runtime import kv_budget
from helix.runtime.kv_budget import num_kv_blocks

MB = 1_000_000


def test_fixed_size_gives_whole_blocks() -> None:
    assert num_kv_blocks(3 * MB, "cpu", memory_gb=0.01) == 3  # 10 MB // 3 MB


def test_utilization_takes_what_the_process_and_others_leave(monkeypatch) -> None:
    monkeypatch.setattr(kv_budget, "_host_memory", lambda: (1000 * MB, 700 * MB))  # 300 in use
    # 0.5 x 1000 MB = 500 MB allowed, 300 MB already used: 200 MB for the KV cache.
    assert num_kv_blocks(10 * MB, "cpu", memory_gb=5.0, utilization=0.5) == 20
    with pytest.raises(ValueError, match="gpu_memory_utilization 0.2: .*no room for one KV block"):
        num_kv_blocks(10 * MB, "cpu", utilization=0.2)  # 200 MB allowed, 300 MB used
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
        num_kv_blocks(10 * MB, "cpu", utilization=1.5)


def test_real_host_memory_is_read() -> None:
    total, available = kv_budget._host_memory()
    assert 0 < available <= total
    assert num_kv_blocks(MB, "cpu", utilization=1.0) >= 1


def test_engine_config_checks_the_fraction() -> None:
    from helix.runtime.engine_config import EngineConfig

    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        EngineConfig(gpu_memory_utilization=0.0)
    assert EngineConfig(gpu_memory_utilization=0.9).gpu_memory_utilization == 0.9


def test_a_tiny_budget_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="kv_cache_memory_gb 1e-06"):
        num_kv_blocks(10 * MB, "cpu", memory_gb=1e-6)
