#!/usr/bin/env bash
# Set everything up (idempotent) and run the main job: real stereo data is recorded into a
# rosbag2, replayed through the live node, evaluated, and a report is written.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-43}
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
exec .venv/bin/foundation-stereo-demo "$@"
