"""From a cluster file and a plan to a running cluster: addresses, local node processes, the
coordinator (ClusterEngine) and re-planning of flows over the nodes still alive."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from helix.planner.plan import Plan
from helix.planner.spec import ClusterSpec

from .cluster_engine import ClusterEngine
from .cluster_state import NodeInfo


def runtime_model(cluster: ClusterSpec, model: str | None = None) -> str:
    """What the nodes load: --model, else the cluster file's model (config.json -> its folder)."""
    source = model or cluster.model_source or cluster.model.name
    path = Path(source)
    if path.name == "config.json":
        return str(path.parent)
    return source


def with_local_addresses(cluster: ClusterSpec, plan: Plan, workdir: Path) -> ClusterSpec:
    """Give every planned node without an address (and the coordinator) an ipc:// endpoint."""
    nodes = tuple(
        replace(node, address=node.address or f"ipc://{workdir}/{node.name}.sock")
        if node.name in plan.nodes
        else node
        for node in cluster.nodes
    )
    coordinator = cluster.coordinator_address or f"ipc://{workdir}/coordinator.sock"
    return replace(cluster, nodes=nodes, coordinator_address=coordinator)


def start_local_nodes(
    cluster: ClusterSpec,
    plan: Plan,
    workdir: Path,
    model: str,
    names: list[str],
    node_args: list[str] | None = None,
    per_node_args: dict[str, list[str]] | None = None,
    launch_prefix: dict[str, list[str]] | None = None,
    env: dict[str, str] | None = None,
) -> list[subprocess.Popen[bytes]]:
    """`helix node` processes for `names`, on this machine (logs under workdir). A node's
    `launch_prefix` wraps its command (e.g. `ip netns exec NS`, `taskset -c 1`); `env` adds
    to the environment they inherit."""
    import yaml

    from helix.config import cluster_to_dict
    from helix.report import save_plan

    cluster_file, plan_file = workdir / "cluster.yaml", workdir / "plan.yaml"
    cluster_file.write_text(yaml.safe_dump(cluster_to_dict(cluster), sort_keys=False))
    save_plan(plan, plan_file)
    processes = []
    for name in names:
        log = open(workdir / f"{name}.log", "ab")  # noqa: SIM115 (owned by the child)
        processes.append(
            subprocess.Popen(
                [
                    *(launch_prefix or {}).get(name, []),
                    sys.executable,
                    "-m",
                    "helix.cli",
                    "node",
                    "--cluster",
                    str(cluster_file),
                    "--plan",
                    str(plan_file),
                    "--name",
                    name,
                    "--model",
                    model,
                    *(node_args or []),
                    *(per_node_args or {}).get(name, []),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=None if env is None else {**os.environ, **env},
                preexec_fn=_die_with_parent,
            )
        )
    return processes


def _die_with_parent() -> None:
    """In a local node's child process before exec: on Linux, get SIGTERM when the process that
    started it dies, so a killed `helix serve` never leaves node processes behind."""
    if sys.platform != "linux":
        return
    import contextlib
    import ctypes
    import signal

    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def reroute_flows(cluster: ClusterSpec, plan: Plan) -> Any:
    """A function alive-names -> max-flow edge flows of the plan's placement over those nodes."""
    from helix.planner.maxflow import max_flow
    from helix.planner.problem import SINK, SOURCE, build_problem

    problem = build_problem(cluster)

    def flows(alive: set[str]) -> list[tuple[str, str, float]]:
        placement = {name: layers for name, layers in plan.placement.items() if name in alive}
        result = max_flow(problem, placement, plan.partial_inference)
        rename = {SOURCE: "coordinator", SINK: "coordinator"}
        return [(rename.get(u, u), rename.get(v, v), f) for (u, v), f in result.edge_flows.items()]

    return flows


def build_cluster_engine(
    cluster: ClusterSpec,
    plan: Plan,
    model: str,
    *,
    max_model_len: int | None = None,
    heartbeat_timeout_s: float = 3.0,
    **scheduling: Any,
) -> ClusterEngine:
    """The coordinator for a cluster whose nodes have addresses (see with_local_addresses);
    `scheduling`: ClusterEngine's max_batch_tokens, max_num_seqs, scheduling_policy."""
    from .loader import read_model_config
    from .tokenizer import load_tokenizer

    if cluster.coordinator_address is None:
        raise ValueError(
            "coordinator.address: the cluster file must give the coordinator an "
            "address (e.g. tcp://10.0.0.1:7000)"
        )
    specs = {node.name: node for node in cluster.nodes}
    infos = []
    for name, node_plan in sorted(plan.nodes.items()):
        spec = specs.get(name)
        if spec is None or not spec.address:
            raise ValueError(f"nodes: {name} is in the plan but has no address in the cluster file")
        layers = (node_plan.start, node_plan.end)
        infos.append(NodeInfo(name, spec.address, layers, gpu_kind=spec.gpu))
    config = read_model_config(model)
    if config.num_layers != plan.num_layers:
        raise ValueError(
            f"plan covers {plan.num_layers} layers but {model} has {config.num_layers}"
        )
    try:
        tokenizer: Any = load_tokenizer(model)
    except (ValueError, OSError):
        from .engine_setup import NullTokenizer

        tokenizer = NullTokenizer()
    limit = max_model_len or min(config.max_position_embeddings, 8192)
    return ClusterEngine(
        infos,
        plan.flows,
        tokenizer,
        config,
        cluster.coordinator_address,
        limit,
        heartbeat_timeout_s=heartbeat_timeout_s,
        reroute=reroute_flows(cluster, plan),
        **scheduling,
    )


def local_pipeline_depth(num_stages: int, cpu_cores: int, threads_per_node: int) -> int:
    """Micro-batches in flight for a pipeline whose nodes share this machine's CPU cores.

    One per stage keeps every stage busy when each node has a device of its own. Nodes sharing
    `cpu_cores` run at most `cpu_cores // threads_per_node` passes at once, and on a CPU a pass
    of a few rows reads the stage's weights whatever its size, so micro-batches beyond that add
    weight reads and no parallelism (measured: 4 stages of SmolLM2 on 2 cores, one thread each,
    batch 32: 81-94 tokens/s with 4 micro-batches in flight, 117-154 with 2).
    """
    return max(1, min(num_stages, cpu_cores // max(1, threads_per_node)))


def local_threads(
    placement: dict[str, tuple[int, int]], num_local: int, cpu_cores: int, all_local: bool
) -> int:
    """Torch threads for each of `num_local` node processes sharing this machine's cores.

    A placement whose nodes hold disjoint layer ranges has one route, so with every node here (and a
    pipeline depth of one: `local_pipeline_depth`) one pass runs at a time, and it gets every
    core, as the one-process engine does. Otherwise passes run side by side and the cores are
    split: more torch threads than cores makes every process spin in OpenMP barriers
    (measured: 3x slower on 2 cores). Measured on 2 cores, SmolLM2 at batch 32, four rounds
    (2026-11-26): a 2-stage chain with 2 threads per node and one micro-batch in flight ran at
    a median 0.89x the one process, against 0.76x with one thread each and two in flight; 4
    stages 0.83x against 0.77x.
    """
    if all_local and _single_route(placement):
        return max(1, cpu_cores)
    return max(1, cpu_cores // max(1, num_local))


def _single_route(placement: dict[str, tuple[int, int]]) -> bool:
    """Whether the nodes' layer ranges are disjoint and follow one another (a chain)."""
    ranges = sorted(placement.values())
    return all(end == start for (_, end), (start, _) in zip(ranges, ranges[1:]))


def short_openmp_spin() -> dict[str, str]:
    """Environment for node processes that share CPU cores: idle OpenMP threads stop spinning
    after ~20k polls (GNU OpenMP's default is 300k; Intel's waits 200 ms) unless the user set it.

    A node's worker threads keep spinning for a few ms after its pass, on the cores that the
    next node's pass and, presumably, the ZeroMQ I/O threads (its send, the next node's
    receive) need.
    Measured on 2 cores, a 4-stage SmolLM2 chain at batch 32 (2026-11-26, two runs each): each
    node's time to send its output went from 0.11-0.16 s to 0.01-0.02 s per 34 passes.
    """
    wanted = {"GOMP_SPINCOUNT": "20000", "KMP_BLOCKTIME": "1"}
    return {key: value for key, value in wanted.items() if key not in os.environ}


def _local_cpu_nodes(node_args: list[str]) -> bool:
    """Whether local nodes started with `node_args` run on the CPU (the default without CUDA)."""
    if "--threads" not in node_args:
        return False
    device = node_args[node_args.index("--device") + 1] if "--device" in node_args else "auto"
    if device != "auto":
        return device == "cpu"
    import torch

    return not torch.cuda.is_available()


class LocalCluster:
    """Plan (if needed), start every node as a local process, and the coordinator; a context
    manager that shuts everything down."""

    def __init__(
        self,
        cluster: ClusterSpec,
        plan: Plan,
        model: str | None = None,
        node_args: list[str] | None = None,
        heartbeat_timeout_s: float = 3.0,
        startup_timeout_s: float = 180.0,
        per_node_args: dict[str, list[str]] | None = None,
        start: list[str] | None = None,
        launch_prefix: dict[str, list[str]] | None = None,
        engine_args: dict[str, Any] | None = None,
    ) -> None:
        """`start`: the nodes to run as local processes (default: planned nodes the cluster file
        gives no address; nodes with an address are expected to be started by hand).
        `launch_prefix`: per node, a command that wraps `helix node` (see start_local_nodes).
        `engine_args`: passed to build_cluster_engine (max_model_len, max_num_seqs, ...)."""
        self.workdir = Path(tempfile.mkdtemp(prefix="helix-cluster-"))
        self.model = runtime_model(cluster, model)
        given = {node.name for node in cluster.nodes if node.address}
        self.local_names = sorted(
            start if start is not None else (name for name in plan.nodes if name not in given)
        )
        self.cluster = with_local_addresses(cluster, plan, self.workdir)
        self.plan = plan
        node_args = list(node_args or [])
        all_local = set(self.local_names) == set(plan.nodes)
        if "--threads" not in node_args and self.local_names:
            cores = os.cpu_count() or 1
            threads = local_threads(plan.placement, len(self.local_names), cores, all_local)
            node_args += ["--threads", str(threads)]
        engine_args = dict(engine_args or {})
        share_cores = all_local and _local_cpu_nodes(node_args)
        env = short_openmp_spin() if share_cores else None
        self._node_args = (node_args, per_node_args, launch_prefix, env)
        self.processes = start_local_nodes(
            self.cluster, plan, self.workdir, self.model, self.local_names, *self._node_args
        )
        try:
            self.engine = build_cluster_engine(
                self.cluster,
                plan,
                self.model,
                heartbeat_timeout_s=heartbeat_timeout_s,
                **engine_args,
            )
            if share_cores and engine_args.get("pipeline_depth") is None:
                self.engine.pipeline_depth = local_pipeline_depth(
                    self.engine.num_stages,
                    os.cpu_count() or 1,
                    int(node_args[node_args.index("--threads") + 1]),
                )
            self.engine.wait_for_nodes(startup_timeout_s, check=self._check_processes)
        except BaseException:
            self.close()
            raise

    def restart(self, name: str) -> None:
        """Start local node `name` again (after it died or was killed); it rejoins on Hello."""
        if name not in self.local_names:
            raise ValueError(f"name: {name!r} is not a local node of this cluster")
        index = self.local_names.index(name)
        old = self.processes[index]
        if old.poll() is None:
            old.kill()
            old.wait()
        self.processes[index] = start_local_nodes(
            self.cluster, self.plan, self.workdir, self.model, [name], *self._node_args
        )[0]

    def _check_processes(self) -> None:
        for name, process in zip(self.local_names, self.processes):
            if process.poll() is not None:
                log = (self.workdir / f"{name}.log").read_text(errors="replace").strip()
                tail = log.splitlines()[-1] if log else "no output"
                raise RuntimeError(f"node {name} exited with code {process.returncode}: {tail}")

    def close(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
