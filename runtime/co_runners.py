"""Processes that keep this machine as busy as a node's neighbours will while the profiler times.

    with CoRunners(2, "smollm2-135m", layers=10, threads=1, batch=11, context=96):
        ... time the stage here ...

Local nodes share one machine: each node of a LocalCluster computes while the others do (cores,
last-level cache and memory bandwidth are shared; with more threads than cores they take turns).
A profile meant for such a node is timed with `count` co-runners, each a process running decode
passes of a stage of the same size with the same torch threads, back to back, as the node's
neighbours do when the pipeline is full. Its times are those of a node whose neighbours are all
busy: an upper bound where they idle part of the time.
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Any


def _run(model: str, layers: int, threads: int, batch: int, context: int, dtype: str,
         ready: Any, stop: Any) -> None:  # fmt: skip
    import torch

    from .loader import load_stage
    from .profiler import _batch

    torch.set_num_threads(threads)
    stage, _ = load_stage(model, 0, layers, dtype=getattr(torch, dtype), device="cpu")
    positions, meta, num_blocks = _batch([context + 1] * batch, [1] * batch, torch.device("cpu"))
    caches = stage.allocate_kv_cache(num_blocks, 16, device=torch.device("cpu"))
    ids = torch.zeros(batch, dtype=torch.int64)
    ready.set()
    with torch.inference_mode():
        while not stop.is_set():
            stage(ids, positions, caches, meta)


class CoRunners:
    """`count` processes running decode passes of stage [0, layers) until the block ends."""

    def __init__(self, count: int, model: str, *, layers: int, threads: int, batch: int,
                 context: int, dtype: str = "float32") -> None:  # fmt: skip
        if count < 0:
            raise ValueError(f"co_runners must be >= 0, got {count}")
        self.count = count
        self.args = (model, layers, threads, batch, context, dtype)
        self.procs: list[Any] = []

    def __enter__(self) -> CoRunners:
        ctx = mp.get_context("spawn")
        self.stop = ctx.Event()
        readies = []
        for _ in range(self.count):
            ready = ctx.Event()
            proc = ctx.Process(target=_run, args=(*self.args, ready, self.stop), daemon=True)
            proc.start()
            self.procs.append(proc)
            readies.append(ready)
        for proc, ready in zip(self.procs, readies):
            while not ready.wait(1.0):
                if not proc.is_alive():
                    self.__exit__()
                    raise RuntimeError(f"a co-runner exited with code {proc.exitcode}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for proc in self.procs:
            proc.join(10.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self.procs = []
