"""Sweep the Pallas paged-decode kernel's launch parameters on a GPU against the Triton kernel.

    python benchmarks/pallas_tune.py [--shapes 1x4096 8x4096 32x1024 64x4096]

For each (batch x context) shape: GB/s of each (pages_per_step, num_splits, num_warps) variant,
each checked against the torch backend first, and Triton's GB/s in the same run. Shapes and
bytes as in benchmarks/kernels.py (bf16, 32 query / 8 KV heads of 128, block 16).
"""

from __future__ import annotations

import argparse
import itertools

import torch

from kernels import Shape, copy_gbps, decode_fn, make_inputs, time_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["1x4096", "8x4096", "32x1024", "64x4096"])
    parser.add_argument("--pages", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--splits", nargs="+", default=["1", "auto", "2auto"])
    args = parser.parse_args()
    import jax

    from helix.kernels.pallas_attention import _default_num_splits, pallas_decode

    if not torch.cuda.is_available() or jax.default_backend() != "gpu":
        raise SystemExit("needs a CUDA GPU visible to torch and jax")
    copy = copy_gbps()
    print(f"device: {torch.cuda.get_device_name()}; measured device copy {copy:.0f} GB/s")
    for text in args.shapes:
        batch, context = (int(x) for x in text.split("x"))
        shape = Shape(batch, context, 32, 8, 128, 16, torch.bfloat16)
        x = make_inputs(shape, "cuda")
        ref = decode_fn("torch", x, shape)()
        triton_ms = time_ms(decode_fn("triton", x, shape), True, 5, 50)
        gb = shape.bytes_moved / 1e9
        print(f"{text}: triton {gb / triton_ms * 1e3:7.1f} GB/s")
        jx = [
            jax.dlpack.from_dlpack(t)
            for t in (x["q"], x["k_cache"], x["v_cache"], x["block_tables"], x["seq_lens"])
        ]
        auto = _default_num_splits(jx[0], 8, False)
        rows = []
        for pages, warps, split in itertools.product(args.pages, args.warps, args.splits):
            splits = {"1": 1, "auto": auto, "2auto": 2 * auto}.get(split) or int(split)

            def run(p=pages, w=warps, s=splits, arrays=jx):
                return pallas_decode(
                    *arrays, scale=128**-0.5, pages_per_step=p, num_splits=s, num_warps=w
                ).block_until_ready()

            try:
                out = torch.from_dlpack(run())
                err = (out.float() - ref.float()).abs().max().item()
                ms = time_ms(run, True, 5, 50)
            except Exception as exc:  # report and go on
                print(f"  pages {pages} warps {warps} splits {splits}: failed {exc!r:.160}")
                continue
            rows.append((gb / ms * 1e3, pages, warps, splits, err))
            print(
                f"  pages {pages} warps {warps} splits {splits:2d}: {gb / ms * 1e3:7.1f} GB/s "
                f"(max err {err:.1e})"
            )
        if rows:
            best = max(rows)
            print(f"  best: pages {best[1]} warps {best[2]} splits {best[3]}: {best[0]:.1f} GB/s")
        x = jx = None  # free the shape's cache before the next one


if __name__ == "__main__":
    main()
