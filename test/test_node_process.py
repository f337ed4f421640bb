"""stereo_depth_node as a process: refuses to start with one clear message and a non-zero exit
code when it cannot work, and ends cleanly (exit 0, no traceback) on Ctrl-C."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from _ros_helpers import domain_id_for_tests

REPO = Path(__file__).resolve().parents[1]


def node_command(*params: str):
    args = [sys.executable, "-m", "foundation_stereo_ros.ros.stereo_depth_node", "--ros-args"]
    for p in params:
        args += ["-p", p]
    return args


def node_env():
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(domain_id_for_tests(offset=50))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_node(*params: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run(node_command(*params), env=node_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory, vits_checkpoint):
    root = tmp_path_factory.mktemp("bad_ckpt")
    truncated = root / "truncated"
    truncated.mkdir()
    data = Path(vits_checkpoint).read_bytes()
    (truncated / "model_best_bp2.pth").write_bytes(data[: len(data) // 3])
    shutil.copy(Path(vits_checkpoint).parent / "cfg.yaml", truncated / "cfg.yaml")
    wrong = root / "wrong_arch"
    shutil.copytree(Path(vits_checkpoint).parent, wrong)
    cfg = yaml.safe_load((wrong / "cfg.yaml").read_text())
    cfg["n_gru_layers"] = 2  # weights are for 3 GRU levels
    (wrong / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return dict(truncated=truncated / "model_best_bp2.pth", wrong=wrong)


@pytest.mark.parametrize("case,params,fragment", [
    ("missing checkpoint", ("checkpoint:=/nonexistent/model_best_bp2.pth", "device:=cpu"), "checkpoint not found"),
    ("empty checkpoint", ("device:=cpu",), "checkpoint parameter is empty"),
    ("truncated checkpoint", ("checkpoint:={truncated}", "device:=cpu"), "cannot read the checkpoint"),
    ("checkpoint for another architecture", ("checkpoint:={wrong}", "device:=cpu"), "does not match"),
    ("bad choice", ("backend:=sgbm", "rectify:=sometimes"), "rectify must be one of"),
    ("out of range", ("backend:=sgbm", "iters:=0"), "iters"),
    ("wrong type", ("backend:=sgbm", "scale:=1"), "scale"),
    ("inconsistent depth limits", ("backend:=sgbm", "min_depth:=5.0", "max_depth:=1.0"), "max_depth"),
])
def test_node_refuses_to_start_with_a_clear_message(bad_checkpoints, case, params, fragment):
    params = tuple(p.format(**bad_checkpoints) for p in params)
    proc = run_node(*params)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, f"{case}: exit code {proc.returncode}\n{output}"
    assert "cannot start" in output and fragment in output, f"{case}:\n{output}"
    assert "Traceback" not in output, f"{case}:\n{output}"


def wait_for_line(proc: subprocess.Popen, text: str, timeout: float, lines: list) -> bool:
    """Read the child's combined output until ``text`` shows up (kept in ``lines``)."""
    found = threading.Event()

    def reader():
        for line in proc.stdout:
            lines.append(line)
            if text in line:
                found.set()

    threading.Thread(target=reader, daemon=True).start()
    return found.wait(timeout)


def test_ctrl_c_ends_the_node_cleanly():
    proc = subprocess.Popen(node_command("backend:=sgbm"), env=node_env(), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list = []
    try:
        assert wait_for_line(proc, "ready", 60.0, lines), "".join(lines)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=20.0)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.2)
    output = "".join(lines)
    assert rc == 0, output
    assert "Traceback" not in output and "Error" not in output, output
