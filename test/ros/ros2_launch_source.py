"""Where the tests get ROS 2's ``launch`` and ``launch_ros``: a ROS install's, else the source in
``../shared/ros2_launch`` (or $ROS2_LAUNCH_DIR), which is not on PyPI (see its README)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import List, Optional

REPO = Path(__file__).resolve().parents[2]
SHARED_LAUNCH = Path(os.environ.get("ROS2_LAUNCH_DIR", REPO.parent / "shared" / "ros2_launch"))
#: The folders to put on sys.path, in this order (the README of ros2_launch).
SHARED_LAUNCH_PATHS = [SHARED_LAUNCH / d for d in ("launch", "launch_ros", "launch_xml", "launch_yaml", "stand_ins")]
HAVE_ROS_LAUNCH = importlib.util.find_spec("launch") is not None and importlib.util.find_spec("launch_ros") is not None
HAVE_SHARED_LAUNCH = all(p.is_dir() for p in SHARED_LAUNCH_PATHS)
SKIP_REASON = (f"neither a ROS install's 'launch'/'launch_ros' nor their source in {SHARED_LAUNCH} is present "
               f"to run the launch files")


def launch_paths() -> Optional[List[str]]:
    """Paths to add to sys.path / PYTHONPATH for ``launch`` and ``launch_ros``: none with a ROS install,
    the shared source otherwise, None where neither is present."""
    if HAVE_ROS_LAUNCH:
        return []
    if HAVE_SHARED_LAUNCH:
        return [str(p) for p in SHARED_LAUNCH_PATHS]
    return None
