"""The planner is pure: importing it (and running a solve) loads no torch, jax, triton or zmq."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from planner_fixtures import PAPER_CLUSTER


def test_planner_imports_nothing_heavy(tmp_path: Path) -> None:
    code = f"""
import sys
import helix.planner.solvers, helix.planner.maxflow, helix.config
from helix.planner.solvers import solve, SolveOptions
from helix.planner.problem import build_problem
plan = solve(build_problem(helix.config.load_cluster({str(PAPER_CLUSTER)!r})), "greedy")
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "jax", "triton", "zmq"))
print(",".join(heavy))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, check=True)
    assert result.stdout.strip() == ""
