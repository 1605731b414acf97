"""Compile every Triton kernel for sm_90 (H100/H200) without a GPU: catches GPU-only errors
(dot shape limits, constexpr specialisation, types) that the interpreter never sees.

Started by test_triton_attention.py in a subprocess without TRITON_INTERPRET. Uses GPU-default
tile sizes, bf16, H=32, Hkv=8, D=128, block_size 16. Prints one line per compiled kernel.
"""

from __future__ import annotations

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from helix.kernels import _triton_kernels as tk

TARGET = GPUTarget("cuda", 90, 32)
HEADS = {"NUM_HEADS": 32, "NUM_KV_HEADS": 8, "HEAD_DIM": 128, "HEAD_DIM_PAD": 128}
DOT = {"DOT_PRECISION": "tf32", "DOT_FP32": False}
CACHES = {"k_cache_ptr": "*bf16", "v_cache_ptr": "*bf16"}


def compile_kernel(fn, types: dict[str, str], constexprs: dict[str, object]) -> None:
    constexprs = {k: v for k, v in constexprs.items() if k in fn.arg_names}
    signature = {name: types.get(name, "constexpr") for name in fn.arg_names}
    missing = [n for n in fn.arg_names if signature[n] == "constexpr" and n not in constexprs]
    assert not missing, missing
    compiled = triton.compile(
        ASTSource(fn, signature, constexprs), target=TARGET, options={"num_warps": 4}
    )
    print(fn.__name__, len(compiled.asm["ptx"]))


def main() -> None:
    ints = dict.fromkeys(
        ["stride_key_t", "stride_key_h", "stride_value_t", "stride_value_h"], "i32"
    )
    compile_kernel(
        tk.write_kv_kernel,
        {"key_ptr": "*bf16", "value_ptr": "*bf16", **CACHES, "slot_mapping_ptr": "*i64", **ints},
        {**HEADS, "BLOCK_HD": 1024},
    )
    common = {
        "block_tables_ptr": "*i32",
        "seq_lens_ptr": "*i32",
        "scale": "fp32",
        "max_blocks_per_seq": "i32",
        **CACHES,
    }
    for splits in (1, 4):
        out = "*bf16" if splits == 1 else "*fp32"
        compile_kernel(
            tk.decode_kernel,
            {
                "q_ptr": "*bf16",
                "out_ptr": out,
                "lse_ptr": out,
                "stride_q_b": "i32",
                "stride_q_h": "i32",
                "tiles_per_split": "i32",
                **common,
            },
            {
                **HEADS,
                **DOT,
                "GROUP": 4,
                "GROUP_PAD": 16,
                "BLOCK_SIZE": 16,
                "TILE_N": 64,
                "NUM_SPLITS": splits,
            },
        )
    compile_kernel(
        tk.combine_splits_kernel,
        {"partial_ptr": "*fp32", "lse_ptr": "*fp32", "out_ptr": "*bf16"},
        {**HEADS, "NUM_SPLITS": 4, "SPLITS_PAD": 4},
    )
    compile_kernel(
        tk.prefill_kernel,
        {
            "q_ptr": "*bf16",
            "out_ptr": "*bf16",
            "query_start_loc_ptr": "*i32",
            "stride_q_t": "i32",
            "stride_q_h": "i32",
            "num_seqs": "i32",
            **common,
        },
        {**HEADS, **DOT, "BLOCK_SIZE": 16, "BLOCK_Q": 64, "TILE_N": 64},
    )


if __name__ == "__main__":
    main()
