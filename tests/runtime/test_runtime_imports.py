"""The node's bookkeeping (scheduler, block pool, KV manager) must import no heavy framework."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "jax", "jaxlib", "triton", "numpy", "zmq")


def test_bookkeeping_imports_no_heavy_modules(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "import helix.runtime.scheduler, helix.runtime.block_pool, helix.runtime.kv_cache\n"
        "import helix.runtime.sequence, helix.runtime.block_hash, helix.runtime.sched_policy\n"
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))\n"
    )
    # Run outside the checkout so the editable install, not the working directory, resolves helix.
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(result.stdout))
    assert loaded.isdisjoint(HEAVY), f"heavy modules loaded: {sorted(loaded & set(HEAVY))}"
