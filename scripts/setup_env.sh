#!/usr/bin/env bash
# Create (or refresh) the virtual environment at .venv/ with everything the package needs.
# Idempotent: when nothing it depends on changed since the last run, it returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY=${PYTHON:-python3}

case "$(uname -m)" in
  x86_64) TORCH_PINS="torch==2.14.1 torchvision==0.29.1" ;;
  aarch64) TORCH_PINS="torch==2.9.1 torchvision==0.24.1" ;;
  *) TORCH_PINS="torch torchvision" ;;
esac

if [ -f /etc/nv_tegra_release ]; then
  # PyPI's aarch64 torch wheels have no CUDA: this environment runs the network on the CPU only.
  echo "setup: this is a Jetson; .venv/ gets PyPI's CPU-only PyTorch (fine for the tests and the main job)." >&2
  echo "setup: for the GPU on the robot, install NVIDIA's PyTorch for your JetPack (README: Install on a robot)." >&2
fi

# Real data used by the main job and the tests: the Middlebury Aloe pair and 13 chessboard pairs.
if ! dpkg -s opencv-doc >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian's opencv-doc (real stereo sample data)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq opencv-doc) >/dev/null \
      || echo "setup: could not install opencv-doc; tests that need its images will be skipped" >&2
  else
    echo "setup: run 'sudo apt-get install opencv-doc' for the real-data tests" >&2
  fi
fi

stamp_src=$(cat requirements.txt setup.py; echo "$TORCH_PINS")
stamp=$(printf '%s' "$stamp_src" | sha256sum | cut -d' ' -f1)
if [ -f "$VENV/.setup-stamp" ] && [ "$(cat "$VENV/.setup-stamp")" = "$stamp" ]; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip >/dev/null
# shellcheck disable=SC2086
"$VENV/bin/pip" install -q $TORCH_PINS
"$VENV/bin/pip" install -q -r requirements.txt
"$VENV/bin/pip" install -q --no-deps -e .
echo "$stamp" > "$VENV/.setup-stamp"
echo "setup: virtual environment ready at $VENV" >&2
