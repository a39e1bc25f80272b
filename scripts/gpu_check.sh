#!/usr/bin/env bash
# The TensorRT backend's whole check on a machine with an NVIDIA GPU (issue 18), in one run of under
# 8 minutes: the gpu-marked tests, `kp3d build-engine` FP32 and FP16 (cold, then from the cache),
# `kp3d bench --backends tensorrt,onnxruntime` for 1, 5 and 20 people, and a refit round trip with the
# probe batch compared against torch (plus the issue's figures: FP16 batch-8 latency, FP16 keypoints
# against ONNX Runtime on CPU, inference latency during a refit).
#
# Run from anywhere: bash scripts/gpu_check.sh. Results (at most 8 files) go to $OUT when it is set,
# else benchmarks/results/gpu_check/: summary.txt, env.txt, build_engine.txt, pytest_gpu.txt,
# refit.json, refit.txt, bench.json, bench.txt. Engines are built into a temporary cache, so the cold
# builds are cold.
#
# Set-up, each step only when missing: the venv (scripts/setup_env.sh), the `tensorrt` package
# (KP3D_TENSORRT_PKG, default tensorrt) and a CUDA build of torch at requirements.txt's version
# (KP3D_CUDA_TAG, default cu128, from download.pytorch.org). These need a package index; on a machine
# without one, point KP3D_WHEELS at a folder of wheels (pip --find-links). KP3D_NO_INSTALL=1 installs
# nothing (the check then stops early where TensorRT or CUDA torch is missing).
set -uo pipefail
cd "$(dirname "$0")/.."

RESULTS="${OUT:-benchmarks/results/gpu_check}"
mkdir -p "$RESULTS"
BUDGET_S="${GPU_CHECK_BUDGET_S:-465}"  # everything, set-up included, ends inside 8 minutes
START=$(date +%s)
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export XDG_CACHE_HOME="$WORK/cache"  # the default engine cache of build-engine, bench and the node
export PYTHONUNBUFFERED=1
PY=.venv/bin/python
KP3D=("$PY" -m kp3d_ros.cli)
MODEL=models/kp3d_poses_large.onnx
SUMMARY="$RESULTS/summary.txt"
ENV_LOG="$RESULTS/env.txt"
PIP_ARGS=(--disable-pip-version-check -q)
[ -n "${KP3D_WHEELS:-}" ] && PIP_ARGS+=(--find-links "$KP3D_WHEELS")
: >"$SUMMARY"
: >"$ENV_LOG"
FAILED=0

note() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((BUDGET_S - ($(date +%s) - START))); }

# step NAME LIMIT_S LOG CMD...: CMD under timeout (its limit cut to the time left), output appended to LOG,
# one PASS/FAIL/SKIP line in the summary; returns CMD's status.
step() {
    local name=$1 limit=$2 log=$3
    shift 3
    local budget=$(($(left) - 5))
    ((budget < limit)) && limit=$budget
    if ((limit < 10)); then
        note "SKIP  $name (out of time)"
        FAILED=1
        return 124
    fi
    local t0 t1 rc
    t0=$(date +%s.%N)
    echo "\$ $* (timeout ${limit} s)" >>"$log"
    timeout --kill-after=5 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    local verdict=PASS
    ((rc != 0)) && verdict=FAIL && FAILED=1
    ((rc == 124 || rc == 137)) && verdict=TIME
    note "$(printf '%-5s %-44s rc=%-3s %6.1f s' "$verdict" "$name" "$rc" "$(awk "BEGIN {print $t1 - $t0}")")"
    return $rc
}

has() { "$PY" -c "$1" >/dev/null 2>&1; }

# --- set-up -----------------------------------------------------------------------------------------------
note "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (modified)')"
INSTALL=1
[ -n "${KP3D_NO_INSTALL:-}" ] && INSTALL=0
[ -x "$PY" ] || step "setup_env.sh" 240 "$ENV_LOG" bash scripts/setup_env.sh
if ((INSTALL)) && ! has "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    TORCH_VERSION=$(sed -n 's/^torch==\([0-9.]*\).*/\1/p' requirements.txt)
    TAG="${KP3D_CUDA_TAG:-cu128}"
    step "pip install torch==$TORCH_VERSION+$TAG" 200 "$ENV_LOG" "$PY" -m pip install "${PIP_ARGS[@]}" \
        --index-url "https://download.pytorch.org/whl/$TAG" --extra-index-url https://pypi.org/simple \
        "torch==$TORCH_VERSION+$TAG"
fi
if ((INSTALL)) && ! has "import tensorrt"; then
    step "pip install ${KP3D_TENSORRT_PKG:-tensorrt}" 200 "$ENV_LOG" "$PY" -m pip install "${PIP_ARGS[@]}" \
        "${KP3D_TENSORRT_PKG:-tensorrt}"
fi
{
    echo "--- nvidia-smi"
    nvidia-smi 2>&1 | head -n 20
    echo "--- packages"
    "$PY" - <<'EOF' 2>&1
import platform

import numpy, onnxruntime, torch

from kp3d_ros.backends.tensorrt_backend import tensorrt_status

print("python", platform.python_version(), "| numpy", numpy.__version__, "| onnxruntime", onnxruntime.__version__,
      onnxruntime.get_available_providers())
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| available", torch.cuda.is_available())
try:
    import tensorrt

    print("tensorrt", tensorrt.__version__)
except Exception as exc:
    print("tensorrt: cannot import:", type(exc).__name__, exc)
print("tensorrt_status:", tensorrt_status())
EOF
} >>"$ENV_LOG" 2>&1
if ! has "from kp3d_ros.backends.tensorrt_backend import tensorrt_status as s; import sys; sys.exit(not s()[0])"; then
    note "STOP  TensorRT is not usable here: $(grep '^tensorrt_status:' "$ENV_LOG" | tail -n 1)"
    exit 1
fi

# --- kp3d build-engine: FP32 and FP16, cold and from the cache --------------------------------------------
BUILD_LOG="$RESULTS/build_engine.txt"
: >"$BUILD_LOG"
engine() {  # engine LABEL EXPECTED(built|loaded from the cache) ARGS...
    local label=$1 expected=$2
    shift 2
    step "build-engine $label" 150 "$BUILD_LOG" "${KP3D[@]}" build-engine "$MODEL" "$@" || return 1
    if ! grep "^engine ready:" "$BUILD_LOG" | tail -n 1 | grep -q "($expected, "; then
        note "FAIL  build-engine $label: expected '$expected' (see build_engine.txt)"
        FAILED=1
    fi
}
engine "fp32 cold" built --no-fp16
engine "fp32 from the cache" "loaded from the cache" --no-fp16
engine "fp16 cold" built --fp16
engine "fp16 from the cache" "loaded from the cache" --fp16

# --- the gpu-marked tests -------------------------------------------------------------------------------
step "pytest -m gpu test/test_tensorrt.py" 200 "$RESULTS/pytest_gpu.txt" \
    "$PY" -m pytest -q -rs -m gpu -p no:cacheprovider test/test_tensorrt.py
note "      $(grep -E '(passed|failed|skipped|error)' "$RESULTS/pytest_gpu.txt" | tail -n 1)"
grep -q " skipped" "$RESULTS/pytest_gpu.txt" && note "FAIL  some gpu tests were skipped on a GPU machine" && FAILED=1

# --- refit round trip, probe against torch, and the issue's figures ----------------------------------------
step "refit round trip + figures" 120 "$RESULTS/refit.txt" "$PY" - "$RESULTS/refit.json" <<'EOF'
"""Refit the default engine (FP32, batch 1..20) to perturbed weights and back, while a thread keeps
inferring; compare with torch; time the FP16 engine at batch 8 and compare it with ONNX Runtime on CPU."""
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from kp3d_ros.backends import tensorrt_backend as trtb
from kp3d_ros.backends.base import NetworkOutput
from kp3d_ros.backends.onnxruntime_backend import OnnxRuntimeBackend
from kp3d_ros.model.checkpoint import load_model

MODEL = Path("models/kp3d_poses_large.onnx")


def torch_outputs(net, x):
    with torch.no_grad():
        keypoints, logits = net(torch.from_numpy(x))
    return NetworkOutput(keypoints.numpy(), logits.numpy())


def median_ms(fn, repeats=300):
    for _ in range(20):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


out = {"tolerances": {"keypoints": trtb.KEYPOINT_TOLERANCE, "logits": trtb.LOGIT_TOLERANCE}}
backend = trtb.TensorRTBackend(MODEL, fp16=False)
out["fp32_engine"] = {"source": backend.engine_source, "path": str(backend.engine_path), "device": backend.device.describe()}
net, _ = load_model(MODEL.with_suffix(".pt"))
shipped_state = {k: v.clone() for k, v in net.state_dict().items()}
generator = torch.Generator().manual_seed(0)
adapted = {k: v + 0.02 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
           for k, v in shipped_state.items()}
x = trtb.probe_batch(backend.num_points, 8, seed=11)
before = backend.infer(x)
done, latencies = threading.Event(), []


def perceive():
    while not done.is_set():
        t = time.perf_counter()
        backend.infer(x)
        latencies.append(time.perf_counter() - t)


thread = threading.Thread(target=perceive)
thread.start()
try:
    backend.update_weights(adapted)
finally:
    done.set()
    thread.join()
after = backend.infer(x)
net.load_state_dict(adapted)
out["refit"] = {**backend.last_refit, "vs_torch": trtb.output_differences(after, torch_outputs(net, x)),
                "moved_by": trtb.output_differences(after, before), "inferences_during": len(latencies),
                "max_infer_ms_during": 1000 * max(latencies), "median_infer_ms_during": 1000 * float(np.median(latencies))}
backend.update_weights(shipped_state)
out["refit_back_to_shipped"] = {**backend.last_refit, "vs_before": trtb.output_differences(backend.infer(x), before)}

fp16 = trtb.TensorRTBackend(MODEL, fp16=True)
cpu = OnnxRuntimeBackend(MODEL, max_batch=fp16.max_batch, providers=["CPUExecutionProvider"])
x20 = trtb.probe_batch(fp16.num_points, fp16.max_batch, seed=12)
out["fp16_engine"] = {"source": fp16.engine_source, "vs_onnxruntime_cpu_batch20": trtb.output_differences(fp16.infer(x20), cpu.infer(x20))}
out["latency_ms"] = {f"{name} batch {b}": median_ms(lambda be=be, b=b: be.infer(x20[:b]))
                     for name, be in (("fp32", backend), ("fp16", fp16)) for b in (1, 8, 20)}
out["figures"] = {
    "fp16 batch 8 <= 1 ms": out["latency_ms"]["fp16 batch 8"] <= 1.0,
    "fp16 keypoints within 5 mm of ONNX Runtime on CPU": out["fp16_engine"]["vs_onnxruntime_cpu_batch20"]["keypoints"] <= 0.005,
    "refit: no inference waited 50 ms (half a 10 Hz frame)": out["refit"]["max_infer_ms_during"] < 50,
    "refit probe within tolerance of torch": not trtb.tolerance_failures(out["refit"]["vs_torch"]),
    "refit back to the shipped weights restores the outputs": not trtb.tolerance_failures(out["refit_back_to_shipped"]["vs_before"]),
}
Path(sys.argv[1]).write_text(json.dumps(out, indent=1))
print(json.dumps(out, indent=1))
sys.exit(0 if all(out["figures"].values()) else 2)
EOF

# --- kp3d bench: TensorRT and ONNX Runtime, 1, 5 and 20 people (the fp32 engine comes from the cache) -----
step "bench tensorrt,onnxruntime 1,5,20 people" 170 "$RESULTS/bench.txt" "${KP3D[@]}" bench \
    --backends tensorrt,onnxruntime --people 1,5,20 --frames 30 --cache "$WORK/scenes" --out "$RESULTS/bench.json"
grep -q "backend tensorrt: skipped" "$RESULTS/bench.txt" && note "FAIL  bench skipped tensorrt (see bench.txt)" && FAILED=1

note "done in $(($(date +%s) - START)) s; $([ $FAILED = 0 ] && echo 'all passed' || echo 'FAILURES above')"
exit $FAILED
