"""Paged-decode bandwidth: achieved GB/s of each attention backend vs the GPU's HBM peak.

    python benchmarks/kernels.py                      # CUDA: torch, triton, pallas
    python benchmarks/kernels.py --peak-gbps 2000     # a GPU not in PEAK_HBM_GBPS

Decode reads every cached K/V byte once, so bytes moved = K + V of every context token plus q,
and GB/s = bytes / kernel time. On a machine without CUDA it runs tiny shapes with the torch
backend only (a smoke test of this script, not a measurement worth quoting).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

# Peak HBM bandwidth of SXM parts, GB/s (vendor data sheets); matched by substring, in order.
PEAK_HBM_GBPS = {"H200": 4800.0, "H100": 3350.0}


@dataclass(frozen=True)
class Shape:
    num_seqs: int
    context_len: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype

    @property
    def bytes_moved(self) -> int:
        elem = torch.empty(0, dtype=self.dtype).element_size()
        kv = 2 * self.num_seqs * self.context_len * self.num_kv_heads * self.head_dim
        return (kv + self.num_seqs * self.num_heads * self.head_dim) * elem


def make_inputs(shape: Shape, device: str) -> dict[str, torch.Tensor]:
    """Random cache with shuffled block ids, built on the device (no host round trip)."""
    blocks_per_seq = -(-shape.context_len // shape.block_size)
    num_blocks = shape.num_seqs * blocks_per_seq
    cache_shape = (num_blocks, shape.block_size, shape.num_kv_heads, shape.head_dim)
    order = torch.randperm(num_blocks, device=device, dtype=torch.int32)
    return {
        "q": torch.randn(
            shape.num_seqs, shape.num_heads, shape.head_dim, device=device, dtype=shape.dtype
        ),
        "k_cache": torch.randn(cache_shape, device=device, dtype=shape.dtype),
        "v_cache": torch.randn(cache_shape, device=device, dtype=shape.dtype),
        "block_tables": order.view(shape.num_seqs, blocks_per_seq),
        "seq_lens": torch.full(
            (shape.num_seqs,), shape.context_len, device=device, dtype=torch.int32
        ),
    }


def decode_fn(backend: str, x: dict[str, torch.Tensor], shape: Shape) -> Callable[[], object]:
    """A zero-argument call of the backend's decode kernel without host-side checks or syncs."""
    scale = shape.head_dim**-0.5
    args = (x["q"], x["k_cache"], x["v_cache"], x["block_tables"], x["seq_lens"])
    if backend == "torch":
        from helix.kernels.torch_attention import torch_decode

        return lambda: torch_decode(*args, scale, shape.context_len)
    if backend == "triton":
        from helix.kernels.triton_attention import triton_decode

        return lambda: triton_decode(*args, scale)
    if backend == "pallas":
        import jax

        from helix.kernels.pallas_attention import pallas_decode

        if jax.default_backend() != "gpu":
            raise RuntimeError("jax has no GPU backend (install jax[cuda12])")
        jx = [jax.dlpack.from_dlpack(t) for t in args]
        return lambda: pallas_decode(*jx, scale=scale).block_until_ready()
    raise ValueError(f"backend: unknown {backend!r}")


def time_ms(fn: Callable[[], object], cuda: bool, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e3


def copy_gbps() -> float:
    """A device-to-device copy of 2 GiB: bytes read + written per second (what HBM really gives)."""
    src = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), True, 3, 20)
    src = dst = torch.empty(0)  # free the 4 GiB before the backends run
    torch.cuda.empty_cache()
    return 2 * 2 * 1024**3 / (ms * 1e-3) / 1e9


def default_peak_gbps(device_name: str) -> float | None:
    for key, gbps in PEAK_HBM_GBPS.items():
        if key in device_name:
            return gbps
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="torch,triton,pallas")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    parser.add_argument("--context-lens", default="1024,2048,4096")
    parser.add_argument("--num-heads", type=int, default=32)
    parser.add_argument("--num-kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    parser.add_argument(
        "--peak-gbps",
        type=float,
        default=None,
        help="HBM peak; default from the device name (H100 3350, H200 4800)",
    )
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=50)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    backends = args.backends.split(",")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    context_lens = [int(c) for c in args.context_lens.split(",")]
    heads = (args.num_heads, args.num_kv_heads, args.head_dim)
    dtype = getattr(torch, args.dtype)
    peak = args.peak_gbps
    if cuda:
        name = torch.cuda.get_device_name()
        peak = peak or default_peak_gbps(name)
        copy = copy_gbps()
        print(
            f"device: {name}; peak HBM: {peak or 'unknown (pass --peak-gbps)'} GB/s (data sheet); "
            f"measured device copy: {copy:.0f} GB/s"
        )
    else:
        print("no CUDA device: tiny shapes, torch backend only (smoke test, not a measurement)")
        backends, batch_sizes, context_lens = ["torch"], [1, 2, 4], [64, 256]
        heads, dtype = (8, 2, 64), torch.float32
        copy = 0.0
    print(
        f"{'backend':8} {'batch':>5} {'context':>7} {'ms':>9} {'GB/s':>8} {'% peak':>7} "
        f"{'% copy':>7}"
    )
    for context_len in context_lens:
        for num_seqs in batch_sizes:
            shape = Shape(num_seqs, context_len, *heads, args.block_size, dtype)
            inputs = make_inputs(shape, "cuda" if cuda else "cpu")
            for backend in backends:
                try:
                    fn = decode_fn(backend, inputs, shape)
                    ms = time_ms(fn, cuda, args.warmup, args.iters)
                except Exception as exc:  # report and go on: one broken backend != no table
                    print(f"{backend:8} {num_seqs:5} {context_len:7}  failed: {exc!r:.200}")
                    continue
                gbps = shape.bytes_moved / (ms * 1e-3) / 1e9
                share = f"{100 * gbps / peak:6.1f}%" if peak else "      -"
                of_copy = f"{100 * gbps / copy:6.1f}%" if copy else "      -"
                print(
                    f"{backend:8} {num_seqs:5} {context_len:7} {ms:9.4f} {gbps:8.1f} {share} "
                    f"{of_copy}"
                )
            del inputs


if __name__ == "__main__":
    main()
