"""Device-side rectification, depth and points against OpenCV and the pipeline's numpy versions."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from foundation_stereo_ros.pipeline import geometry as host_geometry
from foundation_stereo_ros.pipeline.device_geometry import DeviceRemap, depth_to_points, disparity_to_depth

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _rig_maps(h: int, w: int):
    """Float remap tables of a distorted, slightly rotated camera (as a stereo rectification makes)."""
    f = 0.9 * w
    k = np.array([[f, 0, w / 2 - 3.5], [0, f, h / 2 + 2.0], [0, 0, 1]])
    dist = np.array([-0.2, 0.05, 0.001, -0.0005, 0.0])
    r = cv2.Rodrigues(np.array([0.01, -0.02, 0.005]))[0]
    new_k = k.copy()
    new_k[0, 0] = new_k[1, 1] = 0.85 * w
    return cv2.initUndistortRectifyMap(k, dist, r, new_k, (w, h), cv2.CV_32FC1)


@pytest.fixture(scope="module")
def chessboard(opencv_data):
    img = cv2.imread(str(sorted(opencv_data.glob("left*.jpg"))[0]))
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def test_remap_matches_opencv_on_float_images(chessboard):
    h, w = chessboard.shape[:2]
    mx, my = _rig_maps(h, w)
    src = chessboard.astype(np.float32)
    expected = cv2.remap(src, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    remap = DeviceRemap(mx, my, (h, w), DEVICE)
    got = remap(torch.from_numpy(src).permute(2, 0, 1)[None].to(DEVICE))[0].permute(1, 2, 0).cpu().numpy()
    assert got.shape == expected.shape
    diff = np.abs(got - expected)
    # OpenCV quantises the sub-pixel position to 1/32 px; the image changes by at most 255 per px.
    assert np.median(diff) < 0.5 and np.percentile(diff, 99.9) < 255 / 32 + 1e-3
    # Pixels whose source lies outside the image are zero in both.
    outside = (mx < -1) | (my < -1) | (mx > w) | (my > h)
    assert outside.any() and np.all(got[outside] == 0) and np.all(expected[outside] == 0)


def test_remap_matches_the_pipeline_rectifier_on_uint8(chessboard):
    h, w = chessboard.shape[:2]
    mx, my = _rig_maps(h, w)
    fixed = cv2.convertMaps(mx, my, cv2.CV_16SC2)  # the Rectifier's tables with OpenCV 4
    expected = cv2.remap(chessboard, fixed[0], fixed[1], cv2.INTER_LINEAR).astype(np.float32)
    got = DeviceRemap(mx, my, (h, w), DEVICE)(
        torch.from_numpy(chessboard).permute(2, 0, 1)[None].float().to(DEVICE))[0].permute(1, 2, 0).cpu().numpy()
    diff = np.abs(got - expected)
    assert np.mean(diff) < 1.0 and np.percentile(diff, 99) < 8


def test_remap_rejects_bad_input():
    mx = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match="equal"):
        DeviceRemap(mx, np.zeros((4, 6), np.float32), (4, 5))
    remap = DeviceRemap(mx, mx, (4, 5))
    with pytest.raises(ValueError, match="expected"):
        remap(torch.zeros(1, 3, 5, 5))


def test_depth_and_points_match_the_pipeline():
    rng = np.random.default_rng(0)
    disp = rng.uniform(-2, 60, (24, 32)).astype(np.float32)
    disp[3, 4] = np.nan
    disp[5, 6] = 0.0
    f, b, cx, cy = 410.0, 0.12, 15.2, 11.7
    expected = host_geometry.disparity_to_depth(disp, f, b, min_depth=0.9, max_depth=30.0)
    got = disparity_to_depth(torch.from_numpy(disp).to(DEVICE), f, b, min_depth=0.9, max_depth=30.0).cpu().numpy()
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    assert np.isnan(got).sum() > 3  # negative, zero, NaN and out-of-range disparities were present
    np.testing.assert_allclose(got[~np.isnan(got)], expected[~np.isnan(expected)], rtol=1e-6)
    pts = depth_to_points(torch.from_numpy(expected).to(DEVICE), f, f * 1.01, cx, cy).cpu().numpy()
    ref = host_geometry.depth_to_points(expected, f, f * 1.01, cx, cy)
    np.testing.assert_allclose(pts, ref, rtol=1e-5, atol=1e-6, equal_nan=True)
    with pytest.raises(ValueError, match="positive"):
        disparity_to_depth(torch.ones(2, 2), 0.0, 0.1)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        depth_to_points(torch.ones(1, 2, 2), f, f, cx, cy)


def test_point_cloud_matches_the_host_cloud_bit_for_bit():
    from foundation_stereo_ros.pipeline.device_geometry import point_cloud

    rng = np.random.default_rng(3)
    depth = rng.uniform(0.2, 30.0, (24, 32)).astype(np.float32)
    depth[rng.random((24, 32)) < 0.25] = np.nan
    rgb = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    host = host_geometry.PointProjector().cloud(depth, rgb, 40.0, 41.0, 15.3, 11.8)
    dev = point_cloud(torch.from_numpy(depth).to(DEVICE), torch.from_numpy(rgb).permute(2, 0, 1).float().to(DEVICE),
                      40.0, 41.0, 15.3, 11.8)
    np.testing.assert_array_equal(dev.cpu().numpy().view(np.uint32), host.view(np.uint32))
    with pytest.raises(ValueError, match="rgb"):
        point_cloud(torch.zeros(24, 32), torch.zeros(3, 24, 31), 40.0, 41.0, 15.3, 11.8)


def test_auto_geometry_takes_the_path_it_timed_faster():
    """``geometry_device: auto`` on a CPU network takes the host without timing; the timing a GPU
    network runs on its first frame (called here on the CPU) keeps the faster path."""
    from foundation_stereo_ros.pipeline import ALL_OUTPUTS, BatchItem, DecodedPair
    from foundation_stereo_ros.pipeline.calibration import StereoCalibration
    from foundation_stereo_ros.tools.benchmark.node_stages import _synthetic_calibration, stored_disparity_processor

    h, w = 48, 64
    processor = stored_disparity_processor(h, w, "cpu", geometry="auto")
    calibration = StereoCalibration(*_synthetic_calibration(h, w))
    rng = np.random.default_rng(0)
    pair = DecodedPair(*(rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(2)), False)
    processor.process(pair, calibration, ALL_OUTPUTS)
    assert not processor.geometry_on_device and processor.auto_geometry_ms == {}  # CPU: host, nothing timed
    processor._time_geometry_paths(BatchItem(pair, calibration, ALL_OUTPUTS))
    times = processor.auto_geometry_ms
    assert set(times) == {"host", "network"} and all(t > 0 for t in times.values())
    assert processor.geometry_on_device == (times["network"] < times["host"])
    result = processor.process(pair, calibration, ALL_OUTPUTS)
    assert result.cloud is not None and result.depth is not None
