"""foundation-stereo-infer: outputs, depth and cloud geometry, and clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from foundation_stereo_ros import fileio
from foundation_stereo_ros.tools import infer


def test_depth_and_cloud_geometry():
    k = np.array([[200.0, 0, 20.0], [0, 210.0, 10.0], [0, 0, 1]])
    baseline = 0.12
    disp = np.full((20, 40), 8.0, np.float32)
    disp[3, 30] = 0.0  # no match
    disp[5, 35] = np.nan
    disp[7, 4] = 6.0  # x - d < 0: the match falls outside the right image
    disp[9, 20] = 1.0  # depth 24 m, beyond z_far
    left = np.random.default_rng(0).integers(0, 255, (20, 40, 3), dtype=np.uint8)
    depth, points, colours = infer.depth_and_cloud(disp, k, baseline, left, z_far=10.0)
    assert depth[0, 10] == pytest.approx(200.0 * 0.12 / 8.0)
    assert np.isnan(depth[3, 30]) and np.isnan(depth[5, 35]) and np.isnan(depth[7, 4])
    assert depth[9, 20] == pytest.approx(24.0)
    invalid_columns = np.arange(40)[None, :] < 8  # x - 8 < 0
    expected = (~invalid_columns) & np.isfinite(disp) & (disp > 0)
    expected[9, 20] = False  # beyond z_far
    assert len(points) == expected.sum() == len(colours)
    # every point projects back onto its pixel, and carries that pixel's colour
    vs, us = np.nonzero(expected)
    u = k[0, 0] * points[:, 0] / points[:, 2] + k[0, 2]
    v = k[1, 1] * points[:, 1] / points[:, 2] + k[1, 2]
    np.testing.assert_allclose(u, us, atol=1e-3)
    np.testing.assert_allclose(v, vs, atol=1e-3)
    np.testing.assert_array_equal(colours, left[vs, us])


def test_cli_writes_all_outputs(vits_checkpoint, tmp_path):
    rng = np.random.default_rng(1)
    left = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    right = np.roll(left, -3, axis=1)
    fileio.write_rgb(tmp_path / "l.png", left)
    fileio.write_rgb(tmp_path / "r.png", right)
    (tmp_path / "K.txt").write_text("100 0 30 0 100 20 0 0 1\n0.1\n")
    out = tmp_path / "out"
    code = infer.main([str(tmp_path / "l.png"), str(tmp_path / "r.png"), "--checkpoint", str(vits_checkpoint),
                       "--iters", "1", "--intrinsics", str(tmp_path / "K.txt"), "--z-far", "1000",
                       "--scale", "0.5", "--out-dir", str(out)])
    assert code == 0
    disp = np.load(out / "disparity.npy")
    assert disp.shape == (40, 60) and disp.dtype == np.float32
    np.testing.assert_array_equal(fileio.read_pfm(out / "disparity.pfm"), disp)
    import cv2

    vis = cv2.imread(str(out / "disparity.png"))
    assert vis.shape == (40, 120, 3)
    np.testing.assert_array_equal(vis[:, :60, ::-1], left)  # the left image beside the colour map
    depth = np.load(out / "depth.npy")
    points, colours = fileio.read_ply(out / "cloud.ply")
    expected_depth, expected_points, _ = infer.depth_and_cloud(disp, np.array([[100, 0, 30], [0, 100, 20], [0, 0, 1.]]),
                                                              0.1, left, 1000.0)
    np.testing.assert_allclose(depth, expected_depth, equal_nan=True)
    assert len(points) == len(expected_points) == np.isfinite(depth).sum()


def test_cli_errors_are_one_line(tmp_path, capsys, vits_checkpoint):
    fileio.write_rgb(tmp_path / "l.png", np.zeros((10, 12, 3), np.uint8))
    fileio.write_rgb(tmp_path / "r.png", np.zeros((10, 14, 3), np.uint8))
    code = infer.main([str(tmp_path / "l.png"), str(tmp_path / "r.png"), "--checkpoint", str(vits_checkpoint)])
    err = capsys.readouterr().err
    assert code == 2 and "differ in size" in err and "Traceback" not in err
    code = infer.main([str(tmp_path / "l.png"), str(tmp_path / "l.png"), "--checkpoint", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2 and "checkpoint not found" in err
    (tmp_path / "K.txt").write_text("1 2 3\n0.1\n")
    code = infer.main([str(tmp_path / "l.png"), str(tmp_path / "l.png"), "--checkpoint", str(vits_checkpoint),
                       "--intrinsics", str(tmp_path / "K.txt")])
    assert code == 2 and "K needs 9" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        infer.main([str(tmp_path / "l.png"), str(tmp_path / "l.png"), "--checkpoint", "x", "--scale", "2"])


def test_pfm_round_trip(tmp_path):
    a = np.random.default_rng(2).normal(size=(7, 9)).astype(np.float32)
    fileio.write_pfm(tmp_path / "a.pfm", a)
    np.testing.assert_array_equal(fileio.read_pfm(tmp_path / "a.pfm"), a)
    (tmp_path / "b.pfm").write_bytes((tmp_path / "a.pfm").read_bytes()[:-8])
    with pytest.raises(ValueError, match="truncated"):
        fileio.read_pfm(tmp_path / "b.pfm")
