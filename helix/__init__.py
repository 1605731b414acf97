"""helix-serve: serve LLMs over heterogeneous GPU clusters with max-flow layer placement.

The public names are imported lazily so that `import helix.planner` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "LLM", "ClusterSpec", "ModelSpec", "Plan", "SamplingParams", "load_cluster", "plan",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("ClusterSpec", "ModelSpec"):
        from helix.planner import spec

        return getattr(spec, name)
    if name == "Plan":
        from helix.planner.plan import Plan

        return Plan
    if name == "plan":
        from helix.planning import plan

        return plan
    if name == "LLM":
        from helix.llm import LLM

        return LLM
    if name == "SamplingParams":
        from helix.runtime.sampling_params import SamplingParams

        return SamplingParams
    if name == "load_cluster":
        from helix.config import load_cluster

        return load_cluster
    raise AttributeError(f"module 'helix' has no attribute {name!r}")
