#!/usr/bin/env bash
# Everything that needs an NVIDIA GPU, in one run: the CUDA tests, the benchmark and the memory
# table. Results go to $OUT (default ./gpu_results): text logs and JSON to paste into the README.
#
#   OUT=gpu_results ./scripts/gpu_check.sh            # uses python3; PYTHON=... to choose another
#   GPU_CHECK_FULL=1 ./scripts/gpu_check.sh           # also torch.compile and the 3-size matrix (long)
#
# Needs PyTorch with CUDA, timm, numpy and pyyaml; pytest for the tests and opencv-python-headless
# for the tests and timings that involve the pipeline (each part that lacks them is skipped with a
# line in summary.txt). rclpy is not needed: the ROS tests are not part of this run. The tests that
# need the published-format test checkpoint read ../shared/parity, FOUNDATION_STEREO_PARITY_DIR, or
# ./.gpu_parity (a copy of ../shared/parity, for machines that get only this repository).
set -u
OUT=${OUT:-gpu_results}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${FOUNDATION_STEREO_PARITY_DIR:-}" ] && [ ! -d ../shared/parity ] && [ -d .gpu_parity ]; then
    export FOUNDATION_STEREO_PARITY_DIR="$PWD/.gpu_parity"
fi
status=0
has() { "$PY" -c "import $1" >/dev/null 2>&1; }

run() {  # run NAME CMD...: log to $OUT/NAME.txt, remember a failure, go on
    local name=$1
    shift
    echo "== $name: $*" | tee -a "$OUT/summary.txt"
    local t0=$SECONDS
    "$@" >"$OUT/$name.txt" 2>&1
    local rc=$?
    echo "   exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
    tail -n 25 "$OUT/$name.txt"
    [ $rc -eq 0 ] || status=1
}

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/torch.txt"

node_flag=""
if ! has cv2; then
    echo "-- no cv2 (opencv-python-headless): pipeline tests and node-stage timings skipped" | tee -a "$OUT/summary.txt"
    node_flag="--no-node"
fi

# First, so that a run cut short still has it: ViT-L 480x640, 16 iterations, eager fp32/fp16/bf16
# against CUDA graphs (the figure).
run bench_vitl_480x640 "$PY" -m foundation_stereo_ros.tools.benchmark --variants vitl --sizes 480x640 --iters 16 \
    --modes eager-fp32,eager-fp16,eager-bf16,cudagraph-fp16,cudagraph-bf16 --repeats 20 --warmup 3 $node_flag \
    --json "$OUT/bench_vitl_480x640.json"

# fp16/bf16 and CUDA-graph parity against eager fp32, no host-device sync, device-side geometry,
# the GPU pipeline path, the CUDA memory measurement.
tests="test/runtime/test_fastpath.py test/model/test_paths.py test/tools/test_memory_fit.py"
if has cv2; then
    tests="$tests test/pipeline/test_device_geometry.py test/runtime/test_device_pipeline.py"
fi
if has pytest; then
    # shellcheck disable=SC2086
    run pytest "$PY" -m pytest -q -rs -s -p no:cacheprovider $tests  # -s: the tests print measured differences
    # ONNX Runtime's CUDA and TensorRT providers against its CPU provider (onnxruntime-gpu only).
    if "$PY" -c "import onnxruntime as o, onnxscript, cv2, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" >/dev/null 2>&1; then
        run pytest_onnx_gpu "$PY" -m pytest -q -rs -s -p no:cacheprovider test/runtime/test_onnx_export.py -k gpu_provider
    else
        echo "-- no onnxruntime-gpu (or onnxscript, cv2): ONNX Runtime GPU providers not checked" | tee -a "$OUT/summary.txt"
    fi
else
    echo "-- no pytest: CUDA tests skipped" | tee -a "$OUT/summary.txt"
fi

# Speed-up per resolution (both variants), CUDA graphs against eager.
run bench_sizes "$PY" -m foundation_stereo_ros.tools.benchmark --variants vits,vitl --sizes 320x480,480x640,720x1280 \
    --iters 16 --modes eager-fp32,eager-bf16,cudagraph-bf16 --repeats 5 --warmup 1 --no-stages $node_flag \
    --json "$OUT/bench_sizes.json"

# What the live node adds to a 40 ms network at 480x640 (geometry on the host and on the GPU,
# with and without the publisher pipeline). Needs rclpy and the ROS 2 message packages.
if has rclpy && has sensor_msgs && has cv2; then
    run node_rate "$PY" -m foundation_stereo_ros.tools.benchmark --sizes 480x640 --no-network --no-node \
        --node-rate 40 --json "$OUT/node_rate.json"
else
    echo "-- no rclpy / ROS 2 messages: the live node's rate not measured" | tee -a "$OUT/summary.txt"
fi

# Largest size per 8/16/24 GiB, fp32 and bf16, single pass and hierarchical, re-measured.
run memory "$PY" -m foundation_stereo_ros.tools.memory_fit --variants vits,vitl --precisions fp32,bf16 --iters 2 \
    --json "$OUT/memory.json"

if [ "${GPU_CHECK_FULL:-0}" = "1" ]; then
    run bench_full "$PY" -m foundation_stereo_ros.tools.benchmark --preset gpu-full --json "$OUT/bench_full.json"
fi
exit $status
