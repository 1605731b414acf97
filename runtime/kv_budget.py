"""How many KV blocks a node gets: a fixed size (`--kv-cache-memory-gb`) or a fraction of the
device's memory (`--gpu-memory-utilization`, vLLM's name), measured after the weights are loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def num_kv_blocks(
    block_bytes: int,
    device: Any,
    memory_gb: float | None = None,
    utilization: float | None = None,
) -> int:
    """Blocks of `block_bytes` that fit the budget; ValueError naming the flag when none do.
    `utilization` wins over `memory_gb` when both are given."""
    if utilization is not None:
        if not 0 < utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {utilization}")
        budget = budget_bytes(device, utilization)
        flag = f"gpu_memory_utilization {utilization}"
    else:
        budget = (memory_gb if memory_gb is not None else 1.0) * 1e9
        flag = f"kv_cache_memory_gb {memory_gb}"
    blocks = int(budget // block_bytes)
    if blocks < 1:
        raise ValueError(
            f"{flag}: {max(budget, 0) / 1e9:.3f} GB leaves no room for one KV block "
            f"({block_bytes / 1e6:.2f} MB)"
        )
    return blocks


def budget_bytes(device: Any, utilization: float) -> float:
    """The part of `utilization` x device memory not yet in use (weights included in the use)."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        capacity = float(torch.cuda.get_device_properties(device).total_memory)
        return utilization * capacity - torch.cuda.memory_allocated(device)
    total, available = _host_memory()
    return utilization * total - (total - available)


def _host_memory() -> tuple[float, float]:
    """(MemTotal, MemAvailable) in bytes, from /proc/meminfo."""
    fields: dict[str, float] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name] = float(parts[0]) * 1024
    if "MemTotal" not in fields or "MemAvailable" not in fields:
        raise ValueError("gpu_memory_utilization: /proc/meminfo gives no MemTotal/MemAvailable")
    return fields["MemTotal"], fields["MemAvailable"]
