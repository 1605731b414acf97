"""Run the Triton backend under TRITON_INTERPRET=1 and print max errors as JSON.

Started by test_triton_attention.py in a fresh interpreter: the variable must be set before
triton is first imported, which another test in the pytest process may already have done.
Usage: python _triton_interpret_run.py  -> {"<case>/<dtype>": {"write_kv": err, ...}, ...}
"""

from __future__ import annotations

import functools
import json
import os

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from helix.kernels import get_attention  # noqa: E402
from helix.kernels.testing import CASES, compare_to_reference, make_paged_case  # noqa: E402
from helix.kernels.triton_attention import triton_decode  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def main() -> None:
    attn = get_attention("triton")
    results = {}
    for case_name, kwargs in sorted(CASES.items()):
        for dtype_name, dtype in DTYPES.items():
            case = make_paged_case(**kwargs, dtype=dtype)
            errors = compare_to_reference(attn, case)
            # Flash-decoding path: up to 4 KV splits, some empty (default on CPU is 1).
            split_decode = functools.partial(triton_decode, num_splits=4)
            errors["decode_split4"] = compare_to_reference(attn, case, decode=split_decode)[
                "decode"
            ]
            results[f"{case_name}/{dtype_name}"] = errors
    print(json.dumps(results))


if __name__ == "__main__":
    main()
