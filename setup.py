"""Builds the simulator's optional compiled event loop; everything else is in pyproject.toml.

`optional=True`: without a C compiler the install still succeeds and `helix simulate` runs its
pure-Python event loop (same results, ~10x slower on large clusters).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "helix.planner._simcore",
            sources=["planner/_simcore.c"],
            extra_compile_args=["-O2", "-fno-fast-math", "-ffp-contract=off"],
            optional=True,
        ),
        Extension(
            "helix.kernels._cpu_ops",
            sources=["kernels/_cpu_ops.c"],
            extra_compile_args=["-O3", "-fno-fast-math"],
            optional=True,
        ),
    ]
)
