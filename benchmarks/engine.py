"""Engine benchmark: helix against HF transformers `generate` on the same random-weight Llama.

    python benchmarks/engine.py [--batches 1 8 32 64] [--new-tokens 128] [--dtypes float32 bfloat16]
    python benchmarks/engine.py --device cuda [--compare-eager]    # on a GPU

On CUDA the default backend (auto) is triton and decode steps replay CUDA graphs;
--compare-eager adds a column with the same engine built with enforce_eager=True.

Prints decode throughput and the ratio to HF (and to llama.cpp on the same weights, exported to a
GGUF in the same precision, when llama-cpp-python is installed; "-" otherwise) for each batch and
dtype, the fraction of the memory bandwidth limit at batch 1 (the median of three rounds,
each against a bandwidth probe taken just before it), time to first token on a
shared-prefix workload with and without prefix caching, and KV waste (allocated but unused slots)
under a mixed workload.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path
from statistics import median

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import llamacpp  # noqa: E402  (benchmarks/llamacpp.py, next to this script)
import torch  # noqa: E402

from helix import LLM, SamplingParams  # noqa: E402


def build_model(folder: Path, size: str) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    shapes = {
        "100m": dict(
            hidden_size=768,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_key_value_heads=4,
            vocab_size=32000,
        ),
        "20m": dict(
            hidden_size=256,
            intermediate_size=688,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
            vocab_size=32000,
        ),
    }
    config = LlamaConfig(**shapes[size], max_position_embeddings=2048, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    write_tokenizer(folder, config.vocab_size)
    return folder


def write_tokenizer(folder: Path, vocab_size: int) -> None:
    """A word-level tokenizer.json so the checkpoint folder is self-contained."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))


def memory_bandwidth_gbps(device: str = "cpu") -> float:
    if device == "cuda":  # a device-to-device copy, bytes read + written
        src = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        for _ in range(3):
            dst.copy_(src)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(20):
            dst.copy_(src)
        torch.cuda.synchronize()
        gbps = 20 * 2 * src.numel() / (time.perf_counter() - start) / 1e9
        del src, dst
        torch.cuda.empty_cache()
        return gbps
    # The best of five rounds: one round read under a passing load would understate the limit
    # (and so overstate the fraction of it that helix reaches).
    a = torch.randn(8192, 8192)
    x = torch.randn(8192)
    for _ in range(3):
        torch.mv(a, x)
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(10):
            torch.mv(a, x)
        best = max(best, 10 * a.numel() * 4 / (time.perf_counter() - start) / 1e9)
    return best


def bandwidth_fractions(
    llm: LLM, weight_bytes: int, new_tokens: int, device: str, rounds: int = 3
) -> list[float]:
    """Batch-1 decode speed over the bandwidth limit (weight bytes per step at the measured
    bandwidth), each round's bandwidth probed just before its own run: this machine's
    bandwidth drifts by a quarter between minutes, so a probe taken once at start-up would
    make the fraction depend on when it ran."""
    fractions = []
    for _ in range(rounds):
        limit = memory_bandwidth_gbps(device) * 1e9 / weight_bytes  # tokens/s
        fractions.append(helix_decode(llm, 1, new_tokens) / limit)
    return fractions


def prompts_of(batch: int, length: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, 32000) for _ in range(length)] for _ in range(batch)]


def helix_decode(llm: LLM, batch: int, new_tokens: int) -> float:
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    prompts = [{"prompt_token_ids": p} for p in prompts_of(batch, 16)]
    llm.generate(prompts[:1], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    return sum(len(o.outputs[0].token_ids) for o in outputs) / elapsed


def hf_decode(model: torch.nn.Module, batch: int, new_tokens: int) -> float:
    ids = torch.tensor(prompts_of(batch, 16), device=model.device)
    with torch.inference_mode():
        model.generate(ids[:1], max_new_tokens=4, do_sample=False, min_new_tokens=4)
        start = time.perf_counter()
        model.generate(
            ids,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
        if ids.is_cuda:
            torch.cuda.synchronize()
    return batch * new_tokens / (time.perf_counter() - start)


def same_greedy_as_hf(llm: LLM, hf: torch.nn.Module, new_tokens: int = 16) -> str:
    """How many of 4 prompts get the same greedy ids from HF transformers as from helix."""
    prompts = prompts_of(4, 16, seed=5)
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    ours = [
        o.outputs[0].token_ids
        for o in llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    ]
    same = 0
    with torch.inference_mode():
        for prompt, mine in zip(prompts, ours):
            ids = torch.tensor([prompt], device=hf.device)
            out = hf.generate(
                ids,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
            )
            same += out[0, len(prompt) :].tolist() == mine
    return f"{same}/{len(prompts)} prompts ({new_tokens} tokens)"


def same_greedy(llm: LLM, cpp: llamacpp.LlamaCpp, new_tokens: int = 16) -> str:
    """How many of 4 prompts get the same greedy ids from llama.cpp as from helix."""
    prompts = prompts_of(4, 16, seed=5)
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    ours = [
        o.outputs[0].token_ids
        for o in llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    ]
    theirs = cpp.generate(prompts, new_tokens)
    return (
        f"{sum(a == b for a, b in zip(ours, theirs))}/{len(prompts)} prompts ({new_tokens} tokens)"
    )


def shared_prefix_ttft(folder: Path, caching: bool, **engine_args: str) -> float:
    llm = LLM(str(folder), enable_prefix_caching=caching, kv_cache_memory_gb=0.5, **engine_args)
    prefix = prompts_of(1, 512, seed=1)[0]
    params = SamplingParams(temperature=0, max_tokens=1)
    llm.generate([{"prompt_token_ids": prefix + [7]}], params)  # warm the cache
    times = []
    for i in range(8):
        start = time.perf_counter()
        llm.generate([{"prompt_token_ids": prefix + [100 + i, 200 + i]}], params)
        times.append(time.perf_counter() - start)
    return sum(times) / len(times)


def kv_waste(folder: Path, **engine_args: str) -> float:
    """Allocated-but-unused KV slots, sampled each step over a mixed-length workload."""
    llm = LLM(str(folder), kv_cache_memory_gb=0.5, enable_prefix_caching=False, **engine_args)
    engine = llm.engine
    rng = random.Random(3)
    for _ in range(48):
        prompt = [rng.randrange(1, 32000) for _ in range(rng.randint(8, 400))]
        engine.add_request(
            {"prompt_token_ids": prompt},
            SamplingParams(temperature=0, max_tokens=rng.randint(4, 120), ignore_eos=True),
        )
    allocated = used = 0
    block = engine.scheduler.config.block_size
    while engine.has_unfinished_requests():
        engine.step()
        for seq in engine.scheduler.running:
            allocated += len(seq.block_table) * block
            used += seq.num_computed_tokens
        engine.pop_finished()
    return 1 - used / allocated if allocated else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 8, 32, 64])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    parser.add_argument("--size", default="100m", choices=["100m", "20m"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--attention-backend", default="auto", choices=["auto", "torch", "triton", "pallas"]
    )
    parser.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    parser.add_argument(
        "--compare-eager", action="store_true", help="also time the engine without CUDA graphs"
    )
    args = parser.parse_args()
    engine_args = {
        "device": args.device,
        "attention_backend": args.attention_backend,
        "enforce_eager": args.enforce_eager,
    }
    from transformers import AutoModelForCausalLM

    folder = build_model(Path(tempfile.mkdtemp(prefix="helix-bench-")), args.size)
    bandwidth = memory_bandwidth_gbps(args.device)
    where = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"cpu, torch threads {torch.get_num_threads()}"
    )
    print(
        f"model: random Llama {args.size} at {folder}; measured bandwidth {bandwidth:.1f} GB/s; "
        f"{where}; helix attention backend {args.attention_backend}"
    )
    have_llamacpp = llamacpp.available() and args.device == "cpu"
    print(
        f"{'dtype':9s} {'batch':>5s} {'helix tok/s':>12s} {'HF tok/s':>10s} {'ratio':>6s} "
        f"{'llama.cpp':>10s} {'ratio':>6s}"
    )
    for dtype in args.dtypes:
        llm = LLM(str(folder), dtype=dtype, kv_cache_memory_gb=1.0, **engine_args)
        graphs = llm.engine.runner.graphs
        eager = None
        if args.compare_eager and graphs is not None:
            eager_args = {**engine_args, "enforce_eager": True}
            eager = LLM(str(folder), dtype=dtype, kv_cache_memory_gb=1.0, **eager_args)
        print(f"{dtype}: CUDA graphs for decode: {'on' if graphs is not None else 'off'}")
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()
        hf = hf.to(args.device)
        print(f"{dtype}: HF greedy ids equal helix's: {same_greedy_as_hf(llm, hf)}")
        weight_bytes = sum(
            p.numel() * p.element_size()
            for p in hf.parameters()
            if p is not hf.get_input_embeddings().weight
        )
        cpp = None
        if have_llamacpp:
            gguf = llamacpp.export_gguf(folder, dtype)
            cpp = llamacpp.LlamaCpp(gguf, dtype, max(*args.batches, 4), 16 + args.new_tokens + 16)
            print(f"{dtype}: llama.cpp greedy ids equal helix's: {same_greedy(llm, cpp)}")
        for batch in args.batches:
            ours = helix_decode(llm, batch, args.new_tokens)
            theirs = hf_decode(hf, batch, args.new_tokens)
            line = f"{dtype:9s} {batch:5d} {ours:12.1f} {theirs:10.1f} {ours / theirs:5.2f}x"
            if cpp is not None:
                prompts = prompts_of(batch, 16)
                other = llamacpp.llamacpp_decode(cpp, prompts, args.new_tokens)
                line += f" {other:10.1f} {ours / other:5.2f}x"
            else:
                line += f" {'-':>10s} {'-':>6s}"
            if eager is not None:
                slow = helix_decode(eager, batch, args.new_tokens)
                line += f"   eager {slow:.1f} tok/s (graphs {ours / slow:.2f}x)"
            if batch == 1:
                fractions = bandwidth_fractions(llm, weight_bytes, args.new_tokens, args.device)
                low, mid, high = min(fractions), median(fractions), max(fractions)
                line += (
                    f"   of the bandwidth limit: {mid:.0%} (median of {len(fractions)} rounds, "
                    f"{low:.0%}-{high:.0%})"
                )
            print(line, flush=True)
        if cpp is not None:
            cpp.close()
        del llm, hf, eager
        if args.device == "cuda":
            torch.cuda.empty_cache()
    with_cache = shared_prefix_ttft(folder, True, **engine_args)
    without = shared_prefix_ttft(folder, False, **engine_args)
    print(
        f"shared 512-token prefix, TTFT: {with_cache * 1e3:.1f} ms with prefix caching, "
        f"{without * 1e3:.1f} ms without ({without / with_cache:.1f}x)"
    )
    waste = kv_waste(folder, **engine_args)
    print(f"KV waste under a mixed workload: {waste:.2%} of allocated slots unused")


if __name__ == "__main__":
    main()
