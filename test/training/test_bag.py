"""Training pairs from rosbag2 recordings (written with foundation-stereo-make-bag's writer)."""
import numpy as np
import pytest
import yaml

from _eval_helpers import copy_bag
from _training_helpers import synthetic_pairs
from foundation_stereo_ros.pipeline.calibration import rectified_pair
from foundation_stereo_ros.tools.make_bag import BagOptions, StereoFrame, write_stereo_bag
from foundation_stereo_ros.training import DataOptions, open_dataset

F_PX, BASELINE = 400.0, 0.1
START_NS = 1_700_000_000_000_000_000


@pytest.fixture(scope="module")
def frames():
    return synthetic_pairs(3, 48, 64, seed=11)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_disparity_topic_with_principal_point_offset(tmp_path, frames, storage):
    # cx_right != cx_left: the bag's DisparityImage holds x_l - x_r - delta_cx; training needs x_l - x_r.
    calib = rectified_pair(F_PX, 31.5, 23.5, BASELINE, 64, 48, cx_right=34.0)
    gts = []
    for i, (_, _, d) in enumerate(frames):
        g = d.copy()
        g[: 2 + i] = 0  # unknown rows
        gts.append(g)
    bag = tmp_path / f"rec_{storage}"
    write_stereo_bag(bag, [StereoFrame(l, r, gt_disparity=g) for (l, r, _), g in zip(frames, gts)], calib,
                     BagOptions(storage=storage, start_ns=START_NS, rate_hz=10.0))
    logs = []
    ds = open_dataset(f"bag:{bag}", cache_dir=tmp_path / "cache", log=logs.append)
    assert len(ds) == 3
    for s, (left, right, _), g in zip((ds[i] for i in range(3)), frames, gts):
        np.testing.assert_array_equal(s.left, left)
        np.testing.assert_array_equal(s.right, right)
        np.testing.assert_array_equal(s.valid, g > 0)
        np.testing.assert_allclose(s.disparity[g > 0], g[g > 0], atol=1e-4)
    # The second open reuses the extraction; names identify bag and stamp, whatever the cache.
    again = open_dataset(str(bag), cache_dir=tmp_path / "cache", log=logs.append)
    assert again.names == ds.names and any("extracted before" in m for m in logs)
    assert open_dataset(str(bag), cache_dir=tmp_path / "other_cache").names == ds.names
    assert ds.names[1] == f"{bag.resolve()}@{START_NS + 100_000_000}"  # frame 1 at 10 Hz


def test_depth_topic_and_stride(tmp_path, frames):
    calib = rectified_pair(F_PX, 31.5, 23.5, BASELINE, 64, 48)
    bag = tmp_path / "depth_rec"
    depth = [F_PX * BASELINE / d for _, _, d in frames]
    write_stereo_bag(bag, [StereoFrame(l, r, gt_depth=z) for (l, r, _), z in zip(frames, depth)], calib)
    ds = open_dataset(str(bag), DataOptions(bag={"stride": 2}), cache_dir=tmp_path / "cache")
    assert len(ds) == 2  # pairs 0 and 2
    for s, (_, _, d) in zip((ds[0], ds[1]), (frames[0], frames[2])):
        assert s.valid.all()
        np.testing.assert_allclose(s.disparity, d, rtol=1e-5)


def test_bag_without_ground_truth_is_refused(tmp_path, frames):
    calib = rectified_pair(F_PX, 31.5, 23.5, BASELINE, 64, 48)
    bag = tmp_path / "no_gt"
    write_stereo_bag(bag, [StereoFrame(l, r) for l, r, _ in frames[:1]], calib)
    with pytest.raises(ValueError, match="ground.truth"):
        open_dataset(str(bag), cache_dir=tmp_path / "cache")


def test_compressed_recording(tmp_path, frames):
    """A recording with CompressedImage (PNG, lossless) trains on exactly the recorded pixels; a frame
    whose image cannot be decoded is skipped and counted by its problem key."""
    calib = rectified_pair(F_PX, 31.5, 23.5, BASELINE, 64, 48)
    bag = tmp_path / "png_rec"
    summary = write_stereo_bag(bag, [StereoFrame(l, r, gt_disparity=d) for l, r, d in frames], calib,
                               BagOptions(start_ns=START_NS, compressed="png", storage="mcap"))
    assert summary.topics.left_image == "/stereo/left/image_rect/compressed"
    ds = open_dataset(f"bag:{bag}", cache_dir=tmp_path / "cache")
    assert len(ds) == 3
    for i, (left, right, d) in enumerate(frames):
        np.testing.assert_array_equal(ds[i].left, left)
        np.testing.assert_array_equal(ds[i].right, right)
        np.testing.assert_allclose(ds[i].disparity, d, atol=1e-4)

    # the second right image cut short, as a recording that ended mid-message
    spoiled = copy_bag(bag, tmp_path / "spoiled", lambda topic, i, msg: _truncate(msg) if (
        topic == "/stereo/right/image_rect/compressed" and i == 1) else msg)
    ds = open_dataset(str(spoiled), cache_dir=tmp_path / "cache")
    assert len(ds) == 2
    manifest = yaml.safe_load(next((tmp_path / "cache").glob("spoiled-*/manifest.yaml")).read_text())
    assert manifest["skipped"] == {"compressed_truncated": 1}  # the pipeline's problem key


def _truncate(msg):
    msg.data = np.asarray(msg.data, np.uint8)[: len(msg.data) // 2].copy()
    return msg
