"""Random heterogeneous clusters for benchmarks and tests (seeded, so reproducible)."""

from __future__ import annotations

import random

from .catalog import GPU_CATALOG, MODEL_CATALOG
from .spec import ClusterSpec, LinkSpec, NetworkSpec, NodeSpec


def random_cluster(
    seed: int,
    *,
    num_nodes: tuple[int, int] = (24, 64),
    num_kinds: tuple[int, int] = (3, 7),
    num_regions: tuple[int, int] = (1, 3),
    model: str | None = None,
    inter_region_gbps: tuple[float, float] = (0.1, 1.0),
) -> ClusterSpec:
    """24-64 nodes of 3-7 GPU kinds in 1-3 regions; fast links inside a region, slow between."""
    rng = random.Random(seed)
    model_name = model or rng.choice(["llama-2-70b", "llama-30b", "llama-3-70b"])
    spec = MODEL_CATALOG[model_name]
    kinds = rng.sample(sorted(GPU_CATALOG), rng.randint(*num_kinds))
    regions = [f"region-{i}" for i in range(rng.randint(*num_regions))]
    weights = [rng.uniform(0.5, 2.0) for _ in kinds]
    nodes = []
    for i in range(rng.randint(*num_nodes)):
        kind = rng.choices(kinds, weights)[0]
        region = regions[min(len(regions) - 1, int(rng.random() ** 1.5 * len(regions)))]
        nodes.append(
            NodeSpec(f"{kind.lower()}-{i}", kind, region, nic_gbps=rng.choice([25, 50, 100]))
        )
    network = NetworkSpec(
        intra_region=LinkSpec(gbps=rng.choice([10.0, 25.0, 100.0]), latency_ms=0.5),
        inter_region=LinkSpec(
            gbps=round(rng.uniform(*inter_region_gbps), 3), latency_ms=round(rng.uniform(20, 80), 1)
        ),
    )
    return ClusterSpec(
        model=spec,
        gpus=dict(GPU_CATALOG),
        nodes=tuple(nodes),
        network=network,
        coordinator_region=regions[0],
    )
