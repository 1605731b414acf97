"""Sharded-runtime benchmark: local pipelines against the one-process engine, and routing quality.

    python benchmarks/pipeline.py [--batch 32] [--new-tokens 32] [--stages 2 4] [--model M]

1. Throughput of 2- and 4-stage local pipelines (node processes over ipc://) against the one-process
   engine on the same random-weight Llama and workload; overhead = 1 - pipeline / one process.
   All processes share this machine's cores, so this measures the runtime's overhead, not speed-up.
   This machine's speed drifts by a quarter between minutes, so the two are measured in pairs:
   both engines stay loaded, each runs the whole batch once untimed, then `--rounds` rounds each
   time one run of each back to back (order alternating between rounds; every run with shifted
   token ids, same lengths) and the overhead is the median of the rounds' ratios.
2. Bytes moved per token between stages (hidden states) and the mean time a pass spends per hop.
3. Routing on a cluster of unequal nodes: `a` holds the first quarter of the layers and feeds
   b_fast and b_slow, both holding the rest; b_slow is capped at `--slow-cpu` of one core by a
   cgroup CPU quota (cgroup v1 `cpu.cfs_quota_us` or v2 `cpu.max`; needs root), the way a weaker
   GPU is slower, and each node runs one thread. b_slow's speed against an uncapped node is
   measured in this run (the same one-thread engine timed inside and outside the cgroup) and
   sets the plan's profile. Max-flow IWRR routing against random and round-robin routing, same
   workload; each policy runs twice, in two rounds of opposite order, and its best run counts.
   Without root or a cgroup CPU controller, `--slow bf16` (b_slow runs in bf16: slower on CPUs
   without fast bf16 kernels, measured the same way) is used instead.

--model takes a built-in name or checkpoint (e.g. smollm2-135m, the real model); the default is a
random 8-layer Llama with hidden size 512.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helix import LLM, SamplingParams  # noqa: E402
from helix.config import cluster_from_dict  # noqa: E402
from helix.planner.plan import SolverInfo, build_plan  # noqa: E402
from helix.planner.problem import build_problem  # noqa: E402
from helix.runtime.cluster_launch import LocalCluster  # noqa: E402
from helix.runtime.routing import FlowRouter  # noqa: E402


def build_model(folder: Path, layers: int = 8) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=32000,
        max_position_embeddings=2048,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def cluster(
    model: str, names: list[str], layers: int, kinds: dict[str, str] | None = None,
    slow_ratio: float = 0.5,
):  # fmt: skip
    """`slow` nodes run at `slow_ratio` of a `fast` node's speed; `big` ones at twice it."""
    kinds = kinds or {}
    spec = {"memory_gb": 16, "bf16_tflops": 10, "hbm_gbps": 100}
    speed = {"fast": 800.0, "slow": 800.0 * slow_ratio, "big": 1600.0}
    return cluster_from_dict(
        {
            "model": str(model),
            "gpus": {"fast": spec, "slow": spec, "big": spec},
            "nodes": [{"name": n, "gpu": kinds.get(n, "fast")} for n in names],
            "network": {"default": {"gbps": 10, "latency_ms": 0.1}},
            "profiles": {
                kind: {"max_layers": layers, "tokens_per_s": [v / k for k in range(1, layers + 1)]}
                for kind, v in speed.items()
            },
        }
    )


def workload(batch: int, vocab: int = 32000, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"prompt_token_ids": [rng.randrange(3, vocab) for _ in range(rng.randint(16, 64))]}
        for _ in range(batch)
    ]


def timed(llm: LLM, prompts: list[dict], new_tokens: int, repeats: int = 1) -> float:
    """Generated tokens/s, the best of `repeats` runs after one untimed run of the same shapes;
    each run has prompts of its own (the same ones for every engine), so no run finds an
    earlier one's prompts in a prefix cache.

    The warm-up runs the whole workload: a process's first passes at a new size run slower
    (measured on 2 cores, SmolLM2 at batch 32: a 4-stage pipeline's first full prefill took
    4.0-6.5 s summed over its nodes, the third 2.8-3.2 s), and a pipeline has a process per
    stage to warm up, so a small warm-up would count start-up against it."""
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    vocab = max(t for p in prompts for t in p["prompt_token_ids"]) + 1

    def shifted(shift: int) -> list[dict]:
        return [
            {"prompt_token_ids": [3 + (t - 3 + shift) % (vocab - 3) for t in p["prompt_token_ids"]]}
            for p in prompts
        ]

    llm.generate(shifted(repeats), params)  # warm-up: the timed runs use shifts 0..repeats-1
    best = 0.0
    for repeat in range(repeats):
        start = time.perf_counter()
        outs = llm.generate(shifted(repeat), params)
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        best = max(best, tokens / (time.perf_counter() - start))
    return best


def run_once(llm: LLM, prompts: list[dict], new_tokens: int, shift: int) -> float:
    """Generated tokens/s of one run of the workload, token ids shifted by `shift` (the same
    lengths; a shift of its own per run, so no run finds another's prompts in a prefix cache)."""
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    vocab = max(t for p in prompts for t in p["prompt_token_ids"]) + 1
    batch = [
        {
            "prompt_token_ids": [
                3 + (t - 3 + 1000 + shift) % (vocab - 3) for t in p["prompt_token_ids"]
            ]
        }
        for p in prompts
    ]
    start = time.perf_counter()
    outs = llm.generate(batch, params)
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return tokens / (time.perf_counter() - start)


def hop_ms(hidden_size: int, batch: int, prompts: list[dict]) -> None:
    """Per hop: what a node spends on a pass beside its layers (receive, decode, admit, batch
    set-up, encode, send on ipc://), for this workload's prefill and a decode pass of `batch`."""
    from helix.runtime.pass_profile import measure_pass_ms

    tokens = sum(len(p["prompt_token_ids"]) for p in prompts)
    prompt, decode = measure_pass_ms(
        hidden_size, prompt_tokens=[tokens], decode_batches=[batch],
        prompt_seq_tokens=max(1, tokens // len(prompts)), context_tokens=tokens // len(prompts),
    )  # fmt: skip
    print(
        f"per hop, beside the layers (median): {prompt[tokens]:.2f} ms for the {tokens}-token "
        f"prefill pass, {decode[batch]:.2f} ms for a decode pass of {batch} sequences"
    )


def stage_placement(names: list[str], layers: int) -> dict[str, tuple[int, int]]:
    per = layers // len(names)
    return {
        n: (i * per, layers if i == len(names) - 1 else (i + 1) * per) for i, n in enumerate(names)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--stages", type=int, nargs="*", default=[2, 4])
    parser.add_argument("--model", default=None, help="name or checkpoint (default: random)")
    parser.add_argument("--no-routing", action="store_true", help="skip part 3 (routing)")
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds per pipeline")
    parser.add_argument(
        "--slow",
        choices=["cgroup", "bf16"],
        default="cgroup",
        help="how b_slow is made slower in part 3",
    )
    parser.add_argument(
        "--slow-cpu", type=float, default=0.35, help="b_slow's CPU quota in cores (--slow cgroup)"
    )
    args = parser.parse_args()
    from helix.runtime.loader import read_model_config

    model = args.model or str(build_model(Path(tempfile.mkdtemp(prefix="helix-pipe-"))))
    config = read_model_config(model)
    layers, vocab = config.num_layers, config.vocab_size
    prompts = workload(args.batch, vocab)
    single = LLM(model, kv_cache_memory_gb=0.5)
    run_once(single, prompts, args.new_tokens, shift=-1)  # warm-up, whole workload
    ones: list[float] = []
    for stages in args.stages:
        names = [f"s{i}" for i in range(stages)]
        spec = cluster(model, names, layers)
        plan = build_plan(
            build_problem(spec),
            stage_placement(names, layers),
            solver=SolverInfo("manual", 0, "manual"),
            bound=0,
        )
        with LocalCluster(spec, plan, node_args=["--kv-cache-memory-gb", "0.3"]) as local:
            piped = LLM.from_engine(local.engine)
            run_once(piped, prompts, args.new_tokens, shift=-1)  # warm-up, whole workload
            pairs = []
            for r in range(args.rounds):
                shift = len(ones) + 1
                order = [(single, "one"), (piped, "pipe")]
                speeds = {
                    label: run_once(llm, prompts, args.new_tokens, shift)
                    for llm, label in (order if r % 2 == 0 else order[::-1])
                }
                ones.append(speeds["one"])
                pairs.append((speeds["one"], speeds["pipe"]))
            sent = local.engine.endpoint.push
        ratios = sorted(pipe / one for one, pipe in pairs)
        ratio = statistics.median(ratios)
        hidden_bytes = config.hidden_size * 4
        print(
            f"{stages}-stage pipeline: median {ratio:.2f}x one process over {len(pairs)} paired "
            f"rounds (overhead {1 - ratio:.0%}; rounds "
            + ", ".join(f"{pipe:.1f}/{one:.1f}" for one, pipe in pairs)
            + f" tokens/s pipeline/one process); {hidden_bytes * (stages - 1)} bytes of hidden "
            f"state per token between stages ({len(sent)} coordinator links)"
        )
    one = statistics.median(ones) if ones else timed(single, prompts, args.new_tokens, repeats=2)
    hop_ms(config.hidden_size, args.batch, prompts)
    print(
        f"model {args.model or 'random'} ({layers} layers, hidden {config.hidden_size}); "
        f"one process: {one:.1f} tokens/s median (batch {args.batch}, {args.new_tokens} new "
        "tokens)"
    )
    if args.no_routing:
        return
    routing(model, layers, prompts, args)


def cpu_cgroup(cores: float) -> Path | None:
    """A new cgroup whose processes get at most `cores` of CPU time, or None where that cannot be
    made (no root, no cpu controller)."""
    period = 100_000
    quota = max(1000, int(cores * period))
    v1 = Path("/sys/fs/cgroup/cpu")
    v2 = Path("/sys/fs/cgroup")
    try:
        if (v1 / "cpu.cfs_quota_us").exists():
            group = v1 / f"helix-bench-{os.getpid()}"
            group.mkdir(exist_ok=True)
            (group / "cpu.cfs_period_us").write_text(str(period))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
            return group
        if "cpu" in (v2 / "cgroup.controllers").read_text().split():
            (v2 / "cgroup.subtree_control").write_text("+cpu")
            group = v2 / f"helix-bench-{os.getpid()}"
            group.mkdir(exist_ok=True)
            (group / "cpu.max").write_text(f"{quota} {period}")
            return group
    except OSError:
        return None
    return None


def _own_cpu_cgroup() -> Path:
    """The cpu cgroup this process started in (to come back to)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return Path("/sys/fs/cgroup/cpu") / path.lstrip("/")
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return Path("/sys/fs/cgroup") / line[3:].lstrip("/")
    raise OSError("no cpu cgroup found in /proc/self/cgroup")


def join_cgroup(group: Path) -> None:
    """Move this whole process (all its threads) into `group`."""
    (group / "cgroup.procs").write_text(str(os.getpid()))


def routing(model: str, layers: int, prompts: list[dict], args: argparse.Namespace) -> None:
    """Part 3: max-flow routing against random and round robin on unequal nodes."""
    import torch

    names = ["a", "b_fast", "b_slow"]
    group = cpu_cgroup(args.slow_cpu) if args.slow == "cgroup" else None
    if args.slow == "cgroup" and group is None:
        print("no cgroup CPU controller here (root needed): b_slow runs in bf16 instead")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each node runs
    try:
        fast_llm = LLM(model, kv_cache_memory_gb=0.5)
        fast = timed(fast_llm, prompts, args.new_tokens)
        if group is not None:
            home = _own_cpu_cgroup()
            join_cgroup(group)
            try:
                slow = timed(fast_llm, prompts, args.new_tokens)
            finally:
                join_cgroup(home)
            how = f"capped at {args.slow_cpu:g} of a core (cgroup {group})"
            slow_prefix = {"b_slow": ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"',
                                      "sh"]}  # fmt: skip
            slow_args: dict[str, list[str]] = {}
        else:
            slow_llm = LLM(model, kv_cache_memory_gb=0.5, dtype="bfloat16")
            slow = timed(slow_llm, prompts, args.new_tokens)
            how = "in bf16"
            slow_prefix = {}
            slow_args = {"b_slow": ["--dtype", "bfloat16"]}
    finally:
        torch.set_num_threads(threads)
    ratio = slow / fast
    print(
        f"measured, one thread: b_slow {how} {slow:.1f} tokens/s against {fast:.1f} "
        f"uncapped = {ratio:.2f}x (b_slow's profile)"
    )
    spec = cluster(model, names, layers, {"a": "big", "b_slow": "slow"}, slow_ratio=ratio)
    quarter = max(1, layers // 4)
    placement = {"a": (0, quarter), "b_fast": (quarter, layers), "b_slow": (quarter, layers)}
    plan = build_plan(
        build_problem(spec), placement, solver=SolverInfo("manual", 0, "manual"), bound=0
    )
    flows = {(u, v): f for u, v, f in plan.flows}
    print(
        f"unequal nodes: a holds [0, {quarter}), b_fast and b_slow [{quarter}, {layers}); planned "
        f"flows a->b_fast {flows.get(('a', 'b_fast'), 0):.0f}, "
        f"a->b_slow {flows.get(('a', 'b_slow'), 0):.0f} tokens/s"
    )
    results: dict[str, float] = {}
    split: dict[str, str] = {}
    try:
        # Two rounds in opposite orders, best of each policy: a cluster's first run is often
        # slower.
        for policy in ("maxflow", "random", "round-robin", "round-robin", "random", "maxflow"):
            with LocalCluster(
                spec,
                plan,
                node_args=["--kv-cache-memory-gb", "0.3", "--threads", "1"],
                per_node_args=slow_args,
                launch_prefix=slow_prefix,
            ) as local:
                if policy != "maxflow":
                    local.engine.router = _Baseline(policy)
                tput = timed(LLM.from_engine(local.engine), prompts, args.new_tokens)
                if tput > results.get(policy, 0.0):
                    routed = local.engine.routed_counts()
                    split[policy] = "/".join(str(routed.get(("a", b), 0)) for b in names[1:])
                results[policy] = max(tput, results.get(policy, 0.0))
    finally:
        if group is not None:
            group.rmdir()
    base = results["maxflow"]
    print(
        "routing: "
        + ", ".join(
            f"{k} {v:.1f} tokens/s ({v / base:.2f}x; requests to b_fast/b_slow {split[k]})"
            for k, v in results.items()
        )
    )


class _Baseline(FlowRouter):
    def __init__(self, policy: str) -> None:
        self.policy, self.count, self.rng = policy, 0, random.Random(0)

    def route(self, weight, allowed=lambda node: True):
        options = [r for r in (["a", "b_fast"], ["a", "b_slow"]) if all(map(allowed, r))]
        if not options:
            return None
        self.count += 1
        if self.policy == "random":
            return self.rng.choice(options)
        return options[self.count % len(options)]


if __name__ == "__main__":
    main()
