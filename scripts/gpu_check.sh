#!/usr/bin/env bash
# Everything that needs an NVIDIA GPU, in one run of about 6-8 minutes: the CUDA tests, ONNX
# Runtime's GPU providers, the benchmark and the memory table. Logs, JSON and a summary of which
# checks ran, passed, failed or were skipped go to $OUT (default gpu_results/).
#
#   ./scripts/gpu_check.sh --prepare    # on a machine with ../shared/parity and opencv-doc: stage the
#                                       # test inputs in gpu_results/inputs/ (4.5 MB) to take along
#   ./scripts/gpu_check.sh              # on the GPU machine (from any folder)
#   ./scripts/gpu_check.sh --dry-run    # everything except CUDA, on the CPU, tiny sizes, the CUDA tests
#                                       # collected only (about 2 min; test/tools/test_gpu_check_script.py)
#   ./scripts/gpu_check.sh --plan       # print the checks, their commands and expected times
#
# A GPU machine that gets a copy of the working tree lacks ../shared/parity and opencv-doc's
# images: the tests read them from gpu_results/inputs/ (made by --prepare; it is git-ignored, so
# carry it), else from FOUNDATION_STEREO_PARITY_DIR / OPENCV_SAMPLE_DATA, ../shared/parity and
# /usr/share/doc/opencv-doc/examples/data. Checks whose inputs or packages are missing are
# reported as skipped, with the reason.
#
# Environment: PYTHON (default: .venv/bin/python if present, else python3), OUT,
# GPU_CHECK_BUDGET_S (default 450: a check whose expected time no longer fits is skipped, and
# each one is stopped at its own limit), GPU_CHECK_FULL=1 (adds torch.compile with inductor and
# the full benchmark matrix, +10-20 min).
# Needs PyTorch with CUDA, timm, numpy, pyyaml, pytest; opencv-python-headless for the pipeline
# tests and node timings; onnxruntime-gpu + onnxscript for the ONNX Runtime GPU providers; rclpy
# for the live node's rate.
set -u
cd "$(dirname "$0")/.." || exit 2
REPO=$PWD

MODE=gpu
case "${1:-}" in
    "") ;;
    --dry-run) MODE=dry ;;
    --plan) MODE=plan ;;
    --prepare) MODE=prepare ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (--prepare, --dry-run, --plan)" >&2; exit 2 ;;
esac

OUT=${OUT:-gpu_results}
INPUTS=${GPU_CHECK_INPUTS:-$REPO/gpu_results/inputs}
OPENCV_IMAGES="aloeL.jpg aloeR.jpg aloeGT.png"
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi

if [ "$MODE" = prepare ]; then
    parity=${FOUNDATION_STEREO_PARITY_DIR:-../shared/parity}
    opencv=${OPENCV_SAMPLE_DATA:-/usr/share/doc/opencv-doc/examples/data}
    [ -f "$parity/manifest_vits.tsv" ] || { echo "no parity fixtures in $parity" >&2; exit 2; }
    mkdir -p "$INPUTS/parity" "$INPUTS/opencv"
    cp -r "$parity/." "$INPUTS/parity/" || exit 2
    for f in $OPENCV_IMAGES; do
        cp "$opencv/$f" "$INPUTS/opencv/" || { echo "opencv-doc image $opencv/$f missing" >&2; exit 2; }
    done
    echo "staged in $INPUTS ($(du -sh "$INPUTS" | cut -f1)); take gpu_results/inputs to the GPU machine"
    exit 0
fi

# ------------------------------------------------------------------ inputs and packages
if [ -z "${FOUNDATION_STEREO_PARITY_DIR:-}" ]; then
    for d in "$INPUTS/parity" ../shared/parity .gpu_parity; do
        if [ -f "$d/manifest_vits.tsv" ]; then export FOUNDATION_STEREO_PARITY_DIR=$(cd "$d" && pwd); break; fi
    done
fi
if [ -z "${OPENCV_SAMPLE_DATA:-}" ]; then
    for d in "$INPUTS/opencv" /usr/share/doc/opencv-doc/examples/data; do
        if [ -f "$d/aloeL.jpg" ]; then export OPENCV_SAMPLE_DATA=$d; break; fi
    done
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
has() { "$PY" -c "import $1" >/dev/null 2>&1; }
parity_ok=0; [ -f "${FOUNDATION_STEREO_PARITY_DIR:-/nonexistent}/manifest_vits.tsv" ] && parity_ok=1
images_ok=0; [ -f "${OPENCV_SAMPLE_DATA:-/nonexistent}/aloeL.jpg" ] && images_ok=1
[ "$MODE" = plan ] && parity_ok=1 images_ok=1  # the plan lists every check

if [ "$MODE" = dry ]; then
    export CUDA_VISIBLE_DEVICES=""  # nothing below may reach a GPU, even where one exists
    DEV="--device cpu"
    PYTEST_SELECT=(--collect-only)  # the CPU runs these files' other tests in the suite already
    BENCH_MAIN=(--variants vits --sizes 64x96 --iters 1 --modes eager-fp32 --repeats 1 --warmup 1 --no-stages --no-flops)
    BENCH_SIZES=(--variants vits --sizes 64x96 --iters 1 --modes eager-fp32 --repeats 1 --warmup 1 --no-stages --no-flops)
    MEMORY=(--device simulated-cuda --variants vits --precisions bf16 --samples 64x96,96x128 --budgets-gib 2
            --reserve-gib 0.5 --iters 1 --no-hierarchical --no-verify)
    NODE_RATE=(--node-rate 40 --node-rate-seconds 2)
else
    DEV=""
    PYTEST_SELECT=()
    BENCH_MAIN=(--variants vitl --sizes 480x640 --iters 16 --modes eager-fp32,eager-fp16,eager-bf16,cudagraph-fp16,cudagraph-bf16
                --repeats 10 --warmup 2)
    BENCH_SIZES=(--variants vitl --sizes 320x480,720x1280 --iters 16 --modes eager-bf16,cudagraph-bf16 --repeats 5
                 --warmup 1 --no-stages --no-flops)
    MEMORY=(--variants vitl --precisions fp32,bf16 --iters 2 --no-hierarchical)
    NODE_RATE=(--node-rate 40 --node-rate-seconds 8)
fi
BUDGET=${GPU_CHECK_BUDGET_S:-450}
NODE_FLAG=(); has cv2 || NODE_FLAG=(--no-node)

# ------------------------------------------------------------------ running and recording checks
CHECKS=()   # name|status|seconds|detail, in order
PLAN_TOTAL=0
status=0
T0=$SECONDS
[ "$MODE" = plan ] || { mkdir -p "$OUT"; : >"$OUT/summary.txt"; }
note() { [ "$MODE" = plan ] || echo "$*" | tee -a "$OUT/summary.txt"; }

skip() {  # skip NAME REASON
    CHECKS+=("$1|skipped|0|$2")
    note "-- $1: skipped ($2)"
}

check() {  # check NAME EXPECTED_GPU_S LIMIT_S CMD...: run with a time limit, log to $OUT/NAME.txt
    local name=$1 expected=$2 limit=$3
    shift 3
    if [ "$MODE" = plan ]; then
        PLAN_TOTAL=$((PLAN_TOTAL + expected))
        printf '%s\t~%s s\t%s\n' "$name" "$expected" "$*"
        return
    fi
    local left=$((BUDGET - (SECONDS - T0)))
    if [ "$MODE" = gpu ] && [ "$expected" -gt "$left" ]; then
        skip "$name" "expected ${expected} s, ${left} s of GPU_CHECK_BUDGET_S=$BUDGET left"
        return
    fi
    [ "$MODE" = gpu ] && [ "$limit" -gt "$left" ] && limit=$((left > 30 ? left : 30))
    echo "== $name (expected ~${expected} s on a GPU, stopped after ${limit} s): $*" | tee -a "$OUT/summary.txt"
    local t=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.txt" 2>&1
    local rc=$? took=$((SECONDS - t)) result detail
    detail=$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error|deselected|tests? collected)' "$OUT/$name.txt" | tail -n 1 | tr -d '=' | sed 's/^ *//;s/ *$//')
    case $rc in
        0) result=passed  # a pytest run whose tests all skipped counts as skipped
           if [ -n "$detail" ] && ! grep -qE "passed|collected" <<<"$detail"; then result=skipped; fi ;;
        5) result=skipped; detail="no test selected" ;;
        124|137) result=failed; detail="timed out after ${limit} s${detail:+; $detail}"; status=1 ;;
        *) result=failed; detail="exit $rc${detail:+; $detail}"; status=1 ;;
    esac
    CHECKS+=("$name|$result|$took|${detail:-exit 0}")
    echo "   $result after $took s${detail:+: $detail}" | tee -a "$OUT/summary.txt"
    tail -n 15 "$OUT/$name.txt"
}

# ------------------------------------------------------------------ the checks
if [ "$MODE" = plan ]; then
    echo "checks of a GPU run (expected total about 6-8 min on one data-centre GPU; budget ${BUDGET} s):"
elif [ "$MODE" = dry ]; then
    note "gpu_check dry run: every check on the CPU at tiny sizes (the CUDA tests only collected), CUDA hidden; a GPU run takes about 6-8 min"
else
    note "gpu_check: expected about 6-8 min on one data-centre GPU (budget ${BUDGET} s)"
    nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
    if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" >/dev/null 2>&1; then
        note "PyTorch ($PY) sees no CUDA device: nothing to check here (--dry-run runs the CPU rehearsal)"
        exit 2
    fi
fi
[ "$MODE" = plan ] || "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" 2>&1 | tee "$OUT/torch.txt"

# 1. Correctness first: fp16/bf16, CUDA-graph and compile parity against eager fp32 (TF32 off),
# capture on the model's device, no host-device sync, device-side geometry and pipeline, the
# measured CUDA memory.
tests=(test/runtime/test_fastpath.py test/runtime/test_capture_device.py test/model/test_paths.py
       test/tools/test_memory_fit.py test/pipeline/test_device_geometry.py test/pipeline/test_edge_filter.py)
if [ "$parity_ok" = 1 ] && has pytest; then
    [ "$images_ok" = 1 ] && has cv2 && tests+=(test/runtime/test_device_pipeline.py)
    check pytest_cuda 150 240 "$PY" -m pytest -q -rs -s -p no:cacheprovider "${PYTEST_SELECT[@]}" "${tests[@]}"
    [ "$images_ok" = 1 ] || note "-- test/runtime/test_device_pipeline.py left out: no opencv-doc images (--prepare stages them)"
else
    skip pytest_cuda "no parity fixtures (run --prepare where ../shared/parity is) or no pytest"
fi

# 2. The issue's figure: ViT-L 480x640, 16 iterations, eager against CUDA graphs.
check bench_vitl_480x640 75 150 "$PY" -m foundation_stereo_ros.tools.benchmark $DEV "${BENCH_MAIN[@]}" "${NODE_FLAG[@]}" \
    --json "$OUT/bench_vitl_480x640.json"

# 3. ONNX Runtime's CUDA and TensorRT providers against its CPU provider.
if [ "$MODE" = plan ] || "$PY" -c "import onnxruntime as o, onnxscript, cv2, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" >/dev/null 2>&1; then
    if [ "$parity_ok" = 1 ] && [ "$images_ok" = 1 ] || [ "$MODE" = plan ]; then
        check pytest_onnx_gpu 100 200 "$PY" -m pytest -q -rs -s -p no:cacheprovider test/runtime/test_onnx_export.py -k gpu_provider
    else
        skip pytest_onnx_gpu "no parity fixtures or opencv-doc images (--prepare stages them)"
    fi
else
    skip pytest_onnx_gpu "no onnxruntime-gpu (or onnxscript, cv2) in $PY"
fi

# 4. Largest camera size per 8/16/24 GiB, measured on this GPU.
check memory 60 120 "$PY" -m foundation_stereo_ros.tools.memory_fit "${MEMORY[@]}" --json "$OUT/memory.json"

# 5. Speed-up per resolution (both variants), CUDA graphs against eager bf16.
check bench_sizes 45 120 "$PY" -m foundation_stereo_ros.tools.benchmark $DEV "${BENCH_SIZES[@]}" "${NODE_FLAG[@]}" \
    --json "$OUT/bench_sizes.json"

# 6. What the live node adds to a 40 ms network at 480x640 (needs rclpy and the ROS 2 messages).
if [ "$MODE" = plan ] || { has rclpy && has sensor_msgs && has cv2; }; then
    check node_rate 30 90 "$PY" -m foundation_stereo_ros.tools.benchmark $DEV --sizes 480x640 --no-network --no-node \
        "${NODE_RATE[@]}" --json "$OUT/node_rate.json"
else
    skip node_rate "no rclpy / ROS 2 message packages in $PY"
fi

if [ "${GPU_CHECK_FULL:-0}" = "1" ] && [ "$MODE" != dry ]; then
    check pytest_inductor 600 900 env FOUNDATION_STEREO_TEST_INDUCTOR=1 "$PY" -m pytest -q -rs -s -p no:cacheprovider \
        test/runtime/test_fastpath.py -k mode_matches_eager_fp32
    check bench_full 900 1800 "$PY" -m foundation_stereo_ros.tools.benchmark --preset gpu-full --json "$OUT/bench_full.json"
fi
if [ "$MODE" = plan ]; then
    echo "expected GPU time of these checks: about $((PLAN_TOTAL / 60)) min $((PLAN_TOTAL % 60)) s at most, plus start-up"
    exit 0
fi

# ------------------------------------------------------------------ summary
{
    echo
    echo "summary ($MODE run, $((SECONDS - T0)) s in all):"
    printf '  %-20s %-8s %6s  %s\n' check result seconds detail
    n_pass=0 n_fail=0 n_skip=0
    for c in "${CHECKS[@]}"; do
        IFS='|' read -r name result took detail <<<"$c"
        printf '  %-20s %-8s %6s  %s\n' "$name" "$result" "$took" "$detail"
        case $result in passed) n_pass=$((n_pass + 1)) ;; failed) n_fail=$((n_fail + 1)) ;; *) n_skip=$((n_skip + 1)) ;; esac
    done
    echo "ran $((n_pass + n_fail)), passed $n_pass, failed $n_fail, skipped $n_skip; logs and JSON in $OUT/"
    grep -h "^SKIPPED" "$OUT"/pytest_*.txt 2>/dev/null | sed 's/^/  /' | head -n 20
} | tee -a "$OUT/summary.txt"
exit $status
