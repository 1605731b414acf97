#!/usr/bin/env bash
# The GPU checks in one go, from the repo root of a machine with an NVIDIA GPU:
#   bash benchmarks/gpu_check.sh [OUTDIR]        (STEPS="gpu_tests kernels" runs only those)
# 1. the `gpu`-marked kernel tests: triton and pallas compiled for the GPU (no interpreter),
#    against the torch backend at model shapes; 2. paged-decode bandwidth of the three backends
#    against the data sheet's HBM peak and a measured device copy; 3. the engine on CUDA against
#    HF transformers on the same GPU (torch attention, then triton); 4. a sweep of the Pallas
#    decode kernel's launch parameters (benchmarks/pallas_tune.py); 5. CUDA-graph decode: its
#    tests, and the engine with graphs against eager and HF; 6. `helix profile --device cuda`.
#    Each step has its own time
#    limit and a failing one does not stop the next. Wheels in .whl/ (this package, and any
#    dependency the machine lacks) are installed to /tmp/site first when present.
set -u
OUTDIR=${1:-${OUT:-/tmp/helix-gpu}}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false HF_HUB_OFFLINE=1
ROOT=$PWD
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton, jax; print('torch', torch.__version__, '| triton', \
triton.__version__, '| jax', jax.__version__, jax.default_backend())"
cd /tmp  # so that the repo's helix/ folder does not shadow the installed package
STEPS=${STEPS:-gpu_tests graph_tests kernels engine_graphs profile}  # more: pallas_tune engine
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    [[ " $STEPS " == *" $name "* ]] || return 0
    echo "=== $name (limit ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUTDIR/$name.log"
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
}
step gpu_tests 170 python3 -m pytest -c "$ROOT/pyproject.toml" --rootdir "$ROOT" -p no:cacheprovider \
    -m gpu -q -rs "$ROOT/tests/kernels"
step graph_tests 120 python3 -m pytest -c "$ROOT/pyproject.toml" --rootdir "$ROOT" -p no:cacheprovider \
    -q -rs "$ROOT/tests/engine/test_engine_cuda_graphs.py"
step kernels 110 python3 "$ROOT/benchmarks/kernels.py" --batch-sizes 1,8,32,64 --context-lens 1024,4096
step pallas_tune 150 python3 "$ROOT/benchmarks/pallas_tune.py"
step engine 130 python3 "$ROOT/benchmarks/engine.py" --device cuda --batches 1 8 32 64
step engine_graphs 240 python3 "$ROOT/benchmarks/engine.py" --device cuda --batches 1 8 32 64 \
    --compare-eager
# The random ~110M Llama of benchmarks/engine.py (the SmolLM2 wheel may not be on the GPU machine).
step profile 150 bash -c "python3 -c \"import sys; from pathlib import Path; \
sys.path.insert(0, '$ROOT/benchmarks'); import engine; engine.build_model(Path('/tmp/prof'), '100m')\" \
&& python3 -m helix.cli profile /tmp/prof --device cuda -o '$OUTDIR/profile.yaml' \
&& cat '$OUTDIR/profile.yaml'"
step engine_triton 70 python3 "$ROOT/benchmarks/engine.py" --device cuda --dtypes bfloat16 \
    --batches 1 32 --attention-backend triton
