#!/usr/bin/env bash
# The GPU benchmark suite of secu-plugin: one script, run from the repository root.
#
#   OUT=/some/dir bash benchmarks/gpu_suite.sh      # default OUT: ./gpu_out
#
# Needs torch and timm (lightly is optional: without it the SwaV column is skipped; pytest and
# numpy are optional: without them the tests are skipped). Every result goes under $OUT: the
# markdown tables (*.md), the raw numbers (*.json, each with its provenance: command, commit,
# dirty tree, date, GPU, versions, load) and a log of each step. A failing step does not stop
# the later ones; the script exits non-zero if any failed. Each step has its own time limit;
# their sum (110 + 45 + 300 + 60 s, plus 240 s with COMPILE=1) bounds the suite.
# COMPILE=1 adds a torch.compile run of the training step (about 2 more minutes).
# SMOKE=1 checks the script itself on a machine without a GPU (tiny sizes on the CPU).
set -euo pipefail

OUT="${OUT:-./gpu_out}"
mkdir -p "$OUT"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python}"
DEVICE=(--device cuda)
if [ "${SMOKE:-0}" = "1" ]; then
    DEVICE=(--device cpu --smoke --threads 1)
fi
failures=0
start_time=$(date +%s)

# run NAME LIMIT_SECONDS COMMAND...: logs to $OUT/NAME.log, echoes it, never aborts the script.
run() {
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(($(date +%s) - start_time)) s since start): $*"
    local status=0
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1 || status=$?
    cat "$OUT/$name.log"
    if [ "$status" -ne 0 ]; then
        echo "!! $name failed with status $status" | tee -a "$OUT/failures.txt"
        failures=$((failures + 1))
    fi
}

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "dirty: $(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo yes || echo no)"
    echo "load: $(cat /proc/loadavg 2>/dev/null || echo unknown)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | xargs) ($(nproc) cores)"
    nvidia-smi -L || echo "nvidia-smi not available"
    "$PYTHON" - <<'EOF'
import platform
import torch
print("python", platform.python_version())
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for name in ("timm", "lightly", "numpy", "pytest"):
    try:
        module = __import__(name)
        print(name, getattr(module, "__version__", "?"))
    except ImportError:
        print(name, "not installed")
EOF
} 2>&1 | tee "$OUT/environment.txt"

if ! "$PYTHON" -c "import lightly" 2>/dev/null; then
    echo "lightly not installed: SwaV column skipped" | tee -a "$OUT/environment.txt"
fi

# 1. The loss step alone: per-head baseline, fused SeCuLoss, SwaV; both head sets; scaling.
run loss_step_cuda 110 "$PYTHON" benchmarks/loss_step.py "${DEVICE[@]}" --heads both --scaling \
    --json "$OUT/loss_step_cuda.json"
# The paper's ImageNet form (p0, p1 too: four similarity rows per head).
run loss_step_cuda_predictor 45 "$PYTHON" benchmarks/loss_step.py "${DEVICE[@]}" \
    --heads imagenet --predictor --no-swav --json "$OUT/loss_step_cuda_predictor.json"

# 2. A full ResNet-50 training step with and without SeCu (3 interleaved rounds of the modes).
run train_step 300 "$PYTHON" benchmarks/train_step.py "${DEVICE[@]}" --json "$OUT/train_step.json"
if [ "${COMPILE:-0}" = "1" ]; then
    run train_step_compile 240 "$PYTHON" benchmarks/train_step.py "${DEVICE[@]}" --compile \
        --json "$OUT/train_step_compile.json"
fi

# 3. The core tests that touch CUDA, and the golden trajectories (about 10 s on a CPU).
if "$PYTHON" -c "import pytest, numpy" 2>/dev/null; then
    run tests 60 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_core.py \
        tests/test_golden.py -k "cuda or golden"
else
    echo "pytest or numpy not installed: tests skipped" | tee -a "$OUT/environment.txt"
fi

echo "== done in $(($(date +%s) - start_time)) s, $failures failed step(s); results in $OUT"
exit $((failures > 0))
