"""The optional compiled CPU kernels (``_cpu_ops.c``): found once, used where they apply.

``native_ops()`` is the ``helix.kernels._cpu_ops`` module where it was built (``pip install``
with a C compiler), the CPU has AVX2 and FMA, and torch's OpenMP runtime could be bound for its
threads (the libgomp that pip's torch wheels carry in torch/lib; a torch whose OpenMP runtime
lives elsewhere, as conda's may, is not bound); else None, and callers keep their torch paths.
``HELIX_CPU_NATIVE=0`` turns it off.
"""

from __future__ import annotations

import functools
import os
from typing import Any


@functools.cache
def native_ops() -> Any:
    if os.environ.get("HELIX_CPU_NATIVE", "1") == "0":
        return None
    try:
        from . import _cpu_ops  # type: ignore[attr-defined]
    except ImportError:
        return None
    if not _cpu_ops.available():
        return None
    import torch

    # Its threads must be torch's OpenMP team: a pool of its own would fight torch's.
    lib = os.path.realpath(os.path.join(os.path.dirname(torch.__file__), "lib"))
    if _cpu_ops.bind_openmp(lib + os.sep) is None:
        return None
    return _cpu_ops
