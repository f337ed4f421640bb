"""Building this package with colcon in a temporary workspace, as a ROS user builds it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "foundation_stereo_ros"
COLCON = Path(sys.executable).with_name("colcon")

# Top-level entries of a working copy that are not part of the source (build outputs, caches).
_NOT_SOURCE = {".git", ".venv", "build", "install", "log", "output", "gpu_results", ".gpu_parity", ".pytest_cache"}


def colcon_build(tmp: Path, *extra: str) -> Path:
    """``install/`` of ``colcon build`` (plus ``extra`` options) of a copy of this source tree in ``tmp``."""
    src = tmp / "src" / PACKAGE
    shutil.copytree(REPO, src, ignore=lambda d, names: [
        n for n in names if n == "__pycache__" or n.endswith(".egg-info")
        or (Path(d) == REPO and n in _NOT_SOURCE)])
    env = dict(os.environ, PATH=f"{COLCON.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run([str(COLCON), "--log-base", str(tmp / "log"), "build", "--base-paths", str(tmp / "src"),
                           "--build-base", str(tmp / "build"), "--install-base", str(tmp / "install"), *extra],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"colcon build failed:\n{proc.stdout}\n{proc.stderr}"
    assert "1 package finished" in proc.stdout, proc.stdout
    return tmp / "install"


def in_install_space(install: Path, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``command`` in bash after ``source install/local_setup.bash``, outside the source tree."""
    script = f". {install / 'local_setup.bash'} && {command}"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["ROS_DOMAIN_ID"] = env.get("ROS_DOMAIN_ID", "42")
    return subprocess.run(["bash", "-c", script], cwd=install.parent, env=env, capture_output=True, text=True,
                          timeout=timeout)
