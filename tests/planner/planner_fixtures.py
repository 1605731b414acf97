"""Shared builders for planner tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helix.config import cluster_from_dict
from helix.planner.problem import Problem, build_problem

REPO = Path(__file__).resolve().parents[2]
PAPER_CLUSTER = REPO / "clusters" / "helix-single24.yaml"


def tiny(
    profiles: dict[str, list[float]],
    nodes: list[tuple[str, str]],
    *,
    model: str = "smollm2-135m",
    network: dict[str, Any] | None = None,
    regions: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A hand-checkable cluster: custom GPU kinds with given T(k) profiles."""
    regions = regions or {}
    return {
        "model": model,
        "gpus": {kind: {"memory_gb": 16, "bf16_tflops": 50, "hbm_gbps": 300} for kind in profiles},
        "nodes": [
            {"name": name, "gpu": kind, "region": regions.get(name, "default")}
            for name, kind in nodes
        ],
        "network": network or {"default": {"gbps": 1000, "latency_ms": 1}},
        "profiles": {
            kind: {"max_layers": len(values), "tokens_per_s": values}
            for kind, values in profiles.items()
        },
    }


def frontier_cluster() -> dict[str, Any]:
    """One node that holds the whole model, two mid-size and three small ones: a frontier from
    1 hop (the big node alone) to deeper plans with more flow."""
    nodes = [("big", "A"), ("m1", "B"), ("m2", "B"), ("s1", "C"), ("s2", "C"), ("s3", "C")]
    return tiny(
        {
            "A": [900.0 / k for k in range(1, 31)],
            "B": [500.0 / k for k in range(1, 16)],
            "C": [300.0 / k for k in range(1, 11)],
        },
        nodes,
    )


def problem_of(data: dict[str, Any]) -> Problem:
    return build_problem(cluster_from_dict(data))


def small_model_dir(tmp_path, num_layers: int) -> str:
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "num_hidden_layers": num_layers,
                "hidden_size": 64,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "intermediate_size": 128,
                "vocab_size": 100,
            }
        )
    )
    return str(tmp_path)
