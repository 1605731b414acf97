"""helix.planner: pure, deterministic layer placement over a heterogeneous cluster.

No torch, jax or zmq here; MILP and max-flow backends (OR-Tools) load inside the functions that use
them.
"""
