"""stereo_depth_node as a process: refuses to start with one clear message and a non-zero exit
code when it cannot work, and ends cleanly (exit 0, no traceback, no hang) on Ctrl-C or a launch
shutdown (SIGINT, then SIGTERM), also while a frame is in flight."""
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
import rclpy
import yaml

from foundation_stereo_ros.ros import stereo_depth_node as sdn
from foundation_stereo_ros.ros.stereo_depth_node import SHUTDOWN_WAIT_S

from _ros_helpers import InputFeeder, domain_id_for_tests, rectified_infos, textured_scene

pytestmark = pytest.mark.slow  # each starts the node as its own process

REPO = Path(__file__).resolve().parents[2]


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
    # One clear message: a single line says why, nothing else is logged as an error.
    problem_lines = [line for line in output.splitlines() if "FATAL" in line or "ERROR" in line]
    assert len(problem_lines) == 1 and fragment in problem_lines[0], f"{case}:\n{output}"


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


def run_until_in_flight(params, sig, image_size, timeout_ready=180.0):
    """Start the node, feed it pairs until a frame is being processed, send ``sig``; returns
    (exit code, output, seconds from the signal to the exit)."""
    namespace = f"/in_flight_{sig.name.lower()}"
    logger = f"{namespace.strip('/')}.stereo_depth_node"  # node loggers are named after namespace and node
    cmd = node_command(*params) + ["-r", f"__ns:={namespace}", "--log-level", f"{logger}:=debug"]
    env = node_env()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list = []
    feeder = None
    try:
        assert wait_for_line(proc, "ready", timeout_ready, lines), "".join(lines)
        feeder = InputFeeder(namespace, int(env["ROS_DOMAIN_ID"]))
        assert feeder.wait_connected(), "".join(lines)
        h, w = image_size
        left, right, _ = textured_scene(h, w, seed=9)
        infos = rectified_infos(w, h, 200.0, 0.1, w / 2, w / 2, h / 2)
        end = time.monotonic() + 60.0
        # Until the node has matched our output subscription it skips frames: resend until one runs.
        while not any(": processing" in line for line in lines) and time.monotonic() < end:
            feeder.publish(left, right, infos, time.time_ns())
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and not any(": processing" in line for line in lines):
                time.sleep(0.02)
        assert any(": processing" in line for line in lines), "".join(lines)
        time.sleep(0.2)
        signalled = time.monotonic()
        proc.send_signal(sig)
        rc = proc.wait(timeout=SHUTDOWN_WAIT_S + 30.0)
        took = time.monotonic() - signalled
    finally:
        if feeder is not None:
            feeder.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(0.2)  # the reader thread drains the pipe
    return rc, "".join(lines), took


def test_ctrl_c_with_a_network_frame_in_flight_ends_cleanly(vits_checkpoint):
    # A CPU network frame far longer than the shutdown wait: Ctrl-C arrives in the middle of
    # torch's work, and the node must leave without it (a normal interpreter exit would abort
    # with torch's threads still running).
    rc, output, took = run_until_in_flight(
        (f"checkpoint:={vits_checkpoint}", "device:=cpu", "iters:=8", "qos_reliability:=reliable"),
        signal.SIGINT, (192, 384))
    assert rc == 0, output
    assert "Traceback" not in output and "terminate called" not in output, output
    assert "Failed to publish" not in output, output  # no complaints from a half-torn-down node
    assert "shutting down: waiting up to" in output and "in flight" in output, output
    assert "did not finish within" in output, output
    assert took < SHUTDOWN_WAIT_S + 15.0, (took, output)  # bounded: no hang on the frame in flight


def test_launch_shutdown_sigterm_with_a_frame_in_flight_ends_cleanly():
    # SGBM on a large image (about a second): SIGTERM, as ros2 launch sends after SIGINT.
    rc, output, took = run_until_in_flight(
        ("backend:=sgbm", "sgbm_num_disparities:=256", "sgbm_mode:=sgbm", "qos_reliability:=reliable"),
        signal.SIGTERM, (720, 1280), timeout_ready=60.0)
    assert rc == 0, output
    assert "Traceback" not in output and "Failed to publish" not in output, output
    assert "shutting down: waiting up to" in output, output
    assert "did not finish" not in output, output  # a second of SGBM completes within the wait
    assert took < SHUTDOWN_WAIT_S + 15.0, (took, output)


# In-process: main()'s handling of an executor that fails because a signal shut the context down
# between its check and its next wait set (the race behind a rare exit code 1 on SIGTERM).
MAIN_ARGS = ["--ros-args", "-r", "__node:=main_shutdown_race", "-p", "backend:=sgbm"]


def test_main_ends_cleanly_when_the_context_is_shut_down_under_the_executor(monkeypatch):
    def spin_then_lose_the_context(self):
        rclpy.shutdown()  # what rclpy's SIGTERM handler does
        raise RuntimeError("failed to initialize wait set: the given context is not valid")

    monkeypatch.setattr(sdn.SingleThreadedExecutor, "spin", spin_then_lose_the_context)
    assert sdn.main(list(MAIN_ARGS)) == 0


def test_main_reraises_an_executor_error_while_the_context_is_live(monkeypatch):
    def spin_fails(self):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(sdn.SingleThreadedExecutor, "spin", spin_fails)
    with pytest.raises(RuntimeError, match="a real bug"):
        sdn.main(list(MAIN_ARGS))
    assert not rclpy.ok()  # main still shut its context down
