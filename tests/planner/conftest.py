from __future__ import annotations

import pytest
from planner_fixtures import PAPER_CLUSTER

from helix.planner.problem import Problem, build_problem


@pytest.fixture
def paper_problem() -> Problem:
    from helix.config import load_cluster

    return build_problem(load_cluster(PAPER_CLUSTER))
