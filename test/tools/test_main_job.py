"""The main job (foundation-stereo-demo) end to end on the real Aloe pair: without a checkpoint it
says so and runs with sgbm; with one it uses the network, in the offline evaluation and in the
live node alike. Either way the live node's numbers equal the offline evaluation's."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from foundation_stereo_ros.tools import main_job

from _eval_helpers import aloe_gt, disparity_values, read_messages
from conftest import write_deterministic_checkpoint


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("ROS_DOMAIN_ID", str(1 + (os.getpid() * 7 + 71) % 100))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.delenv("FOUNDATION_STEREO_CHECKPOINT", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.mark.slow
def test_without_checkpoint_runs_sgbm_and_says_so(tmp_path, opencv_data, capsys):
    out = tmp_path / "demo"
    assert main_job.main(["-o", str(out), "--frames", "3", "--image-scale", "0.125", "--device", "cpu",
                          "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "No FoundationStereo checkpoint found" in text
    assert "NVlabs/FoundationStereo" in text and "non-commercial" in text
    assert str(tmp_path / "home" / ".cache" / "foundation_stereo" / "23-51-11") in text
    for name in ("report/report.html", "report/report.md", "report/summary.json", "report/frames.csv",
                 "recording", "outputs", "live/node.log"):
        assert str(out / name) in text, name
        assert (out / name).exists(), name

    s = json.loads((out / "report" / "summary.json").read_text())
    assert list(s["backends"]) == ["sgbm"] and s["frames"] == 3
    live = s["live"]["backends"]["sgbm"]
    assert live["frames"] == 3 and live["dropped"] == 0
    cmp_ = s["live_vs_offline"]
    assert cmp_["frames_compared"] == 3 and cmp_["max_disparity_difference_px"] == 0.0
    assert cmp_["pixels_valid_in_only_one"] == 0
    assert "identical to the offline evaluation's" in text
    assert all(r["difference"] == 0 for r in cmp_["rows"] if r["difference"] is not None)
    assert live["metrics"] == s["backends"]["sgbm"]["metrics"]  # no frame dropped: same totals
    assert "Live replay vs offline evaluation" in (out / "report" / "report.html").read_text()

    # The recording is the Aloe pair panned: each frame's ground truth is a window of aloeGT.png,
    # and each frame's CameraInfo moves the principal point with the window.
    msgs = read_messages(out / "recording")
    gt_full = aloe_gt(opencv_data, 0.125)  # 160 x 139
    gts = [disparity_values(m) for _, m in msgs["/foundation_stereo_demo/camera/gt/disparity"]]
    infos = [m for _, m in msgs["/foundation_stereo_demo/camera/left/camera_info"]]
    assert len(gts) == 3 and gts[0].shape == (139, 128)
    for gt, info in zip(gts, infos):
        cx = np.asarray(info.k).reshape(3, 3)[0, 2]
        x0 = int(round((1281 / 2 + 0.5) * 0.125 - 0.5 - cx))
        window = gt_full[:, x0:x0 + 128]
        known = window > 0
        np.testing.assert_array_equal(np.isfinite(gt), known)
        np.testing.assert_array_equal(gt[known], window[known])
    assert [int(round((1281 / 2 + 0.5) * 0.125 - 0.5 - np.asarray(i.k)[2])) for i in infos] == [0, 16, 32]


@pytest.mark.slow
def test_with_checkpoint_uses_the_network_live_and_offline(tmp_path, opencv_data, capsys):
    # The documented cache folder holds a published-format ViT-S checkpoint with deterministic
    # weights; max_disp 64 (instead of 416) keeps its random-weight disparities inside these small
    # images, so that live and offline outputs have valid pixels to compare.
    cache = tmp_path / "home" / ".cache" / "foundation_stereo" / "11-33-40"
    write_deterministic_checkpoint(cache, max_disp=64)
    out = tmp_path / "demo"
    assert main_job.main(["-o", str(out), "--frames", "1", "--image-scale", "0.0625", "--iters", "1", "--device", "cpu", "--warmup", "0",
                          "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert f"Using the FoundationStereo checkpoint {cache / 'model_best_bp2.pth'}" in text
    assert "No FoundationStereo checkpoint" not in text
    s = json.loads((out / "report" / "summary.json").read_text())
    assert list(s["backends"]) == ["foundation_stereo"]
    assert s["meta"]["backends"]["foundation_stereo"]["checkpoint"] == str(cache / "model_best_bp2.pth")
    assert s["meta"]["backends"]["foundation_stereo"]["iters"] == 1
    log = (out / "live" / "node.log").read_text()
    assert "backend foundation_stereo" in log  # the live node ran the network too
    cmp_ = s["live_vs_offline"]
    assert cmp_["frames_compared"] == s["live"]["backends"]["foundation_stereo"]["frames"] == 1
    assert s["backends"]["foundation_stereo"]["metrics"]["completeness"] > 10.0
    # The same CPU computation in two processes: identical up to float rounding, same valid pixels.
    assert cmp_["max_disparity_difference_px"] < 1e-3


def test_agreement_sentence():
    base = {"frames_compared": 2, "pixels_compared": 10000, "max_per_frame_metric_difference": 0.0}
    assert "identical" in main_job.agreement_sentence({**base, "max_disparity_difference_px": 0.0,
                                                       "pixels_valid_in_only_one": 0})
    assert "non-determinism" in main_job.agreement_sentence({**base, "max_disparity_difference_px": 2e-4,
                                                             "pixels_valid_in_only_one": 3})
    assert "DIFFER" in main_job.agreement_sentence({**base, "max_disparity_difference_px": 0.5,
                                                    "pixels_valid_in_only_one": 0})
    assert "DIFFER" in main_job.agreement_sentence({**base, "max_disparity_difference_px": 0.0,
                                                    "pixels_valid_in_only_one": 500})
    assert "no frame" in main_job.agreement_sentence({**base, "frames_compared": 0})
