"""Bag reading: pairing with the node's synchroniser, topic detection, ground-truth decoding,
on bags written from the real Aloe pair."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from foundation_stereo_ros.evaluation import bag_io as B
from foundation_stereo_ros.pipeline.calibration import rectified_pair

from _eval_helpers import T0, write_plan_bag


@pytest.fixture(scope="module")
def aloe_small(opencv_data):
    left = cv2.cvtColor(cv2.imread(str(opencv_data / "aloeL.jpg")), cv2.COLOR_BGR2RGB)
    right = cv2.cvtColor(cv2.imread(str(opencv_data / "aloeR.jpg")), cv2.COLOR_BGR2RGB)
    size = (160, 139)
    return cv2.resize(left, size, interpolation=cv2.INTER_AREA), cv2.resize(right, size, interpolation=cv2.INTER_AREA)


def write_frames(path, aloe_small, plan, storage="sqlite3"):
    return write_plan_bag(path, aloe_small[0], aloe_small[1], plan, storage)


ALL = [("left", 0), ("left_info", 0), ("right", 0), ("right_info", 0)]


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_pairs_like_the_node(tmp_path, aloe_small, storage):
    plan = [
        [("right_info", 0), ("right", 0), ("left", 0), ("left_info", 0)],  # any order pairs
        [("left", 0), ("left_info", 0), ("right_info", 0)],  # right image lost
        [("left", 0), ("left_info", 0), ("right", 0), ("right_info", 2_000_000)],  # info 2 ms late
        list(ALL),
    ]
    write_frames(tmp_path / "bag", aloe_small, plan, storage)
    with B.StereoBagReader(tmp_path / "bag") as r:
        assert r.topics.left_image == "/cam/left/image_rect" and r.topics.gt_disparity is None
        pairs = list(r.pairs())
        stamps = [p.stamp_ns - T0 for p in pairs]
        assert stamps == [0, 300_000_000]  # exact sync, as the node's default
        assert [p.index for p in pairs] == [0, 1]
        # frame 1: left, left_info, right_info without partner; frame 2: all four (2 ms apart)
        assert r.unpaired == {"left": 2, "left_info": 2, "right": 1, "right_info": 2}
        left = pairs[0].left
        assert (left.width, left.height, left.encoding) == (160, 139, "rgb8")
        np.testing.assert_array_equal(np.asarray(left.data).reshape(139, 160, 3), aloe_small[0])

    # With the node's approximate sync and 5 ms tolerance, the late CameraInfo pairs too.
    with B.StereoBagReader(tmp_path / "bag", sync={"approximate_sync": True, "sync_tolerance_s": 0.005}) as r:
        assert [p.stamp_ns - T0 for p in r.pairs()] == [0, 200_000_000, 300_000_000]


def test_reads_storage_file_path_and_reports_missing_topics(tmp_path, aloe_small):
    write_frames(tmp_path / "bag", aloe_small, [ALL], "mcap")
    mcap = next((tmp_path / "bag").glob("*.mcap"))
    with B.StereoBagReader(mcap) as r:  # the storage file inside the bag folder is accepted too
        assert len(list(r.pairs())) == 1
    with pytest.raises(ValueError, match="not in"):
        B.StereoBagReader(tmp_path / "bag", left_image="/nope/image")
    with pytest.raises(ValueError, match="no such bag"):
        B.StereoBagReader(tmp_path / "missing")


@pytest.mark.parametrize("names, left, right", [
    (["/zed/zed_node/left/image_rect_color", "/zed/zed_node/right/image_rect_color",
      "/zed/zed_node/left/image_rect_gray", "/zed/zed_node/right/image_rect_gray"],
     "/zed/zed_node/left/image_rect_color", "/zed/zed_node/right/image_rect_color"),
    (["/camera/camera/infra1/image_rect_raw", "/camera/camera/infra2/image_rect_raw",
      "/camera/camera/color/image_raw"], "/camera/camera/infra1/image_rect_raw", "/camera/camera/infra2/image_rect_raw"),
    (["/front_stereo_camera/left/image_rect_color", "/front_stereo_camera/right/image_rect_color"],
     "/front_stereo_camera/left/image_rect_color", "/front_stereo_camera/right/image_rect_color"),
])
def test_detects_camera_topics(names, left, right):
    types = {n: B.IMAGE for n in names}
    for n in names:
        types[n.rsplit("/", 1)[0] + "/camera_info"] = B.CAMERA_INFO
    types["/rig/gt/depth"] = B.IMAGE
    t = B.detect_topics(types)
    assert (t.left_image, t.right_image) == (left, right)
    assert t.left_info == left.rsplit("/", 1)[0] + "/camera_info"
    assert t.gt_depth == "/rig/gt/depth" and t.gt_disparity is None


@pytest.mark.parametrize("images, compressed, left, right", [
    # A robot's recording: compressed only (compressedDepth is another transport, not a stereo image).
    ([], ["/zed/zed_node/left/image_rect_color/compressed", "/zed/zed_node/right/image_rect_color/compressed",
          "/zed/zed_node/left/image_rect_color/compressedDepth"],
     "/zed/zed_node/left/image_rect_color/compressed", "/zed/zed_node/right/image_rect_color/compressed"),
    # raw and compressed of the same cameras: the raw Image topics win
    (["/oak/left/image_raw", "/oak/right/image_raw"], ["/oak/left/image_raw/compressed",
                                                       "/oak/right/image_raw/compressed"],
     "/oak/left/image_raw", "/oak/right/image_raw"),
    # several compressed streams per camera: the same preference as for raw topics
    ([], ["/cam/left/image_raw/compressed", "/cam/left/image_rect/compressed", "/cam/right/image_raw/compressed",
          "/cam/right/image_rect/compressed"], "/cam/left/image_rect/compressed", "/cam/right/image_rect/compressed"),
])
def test_detects_compressed_topics(images, compressed, left, right):
    types = {n: B.IMAGE for n in images}
    types.update({n: B.COMPRESSED_IMAGE for n in compressed})
    for n in images + compressed:
        types[B.image_topic_of(n).rsplit("/", 1)[0] + "/camera_info"] = B.CAMERA_INFO
    t = B.detect_topics(types)
    assert (t.left_image, t.right_image) == (left, right)
    assert t.left_info == B.image_topic_of(left).rsplit("/", 1)[0] + "/camera_info"
    assert t.right_info == B.image_topic_of(right).rsplit("/", 1)[0] + "/camera_info"
    assert B.image_topic_of("/a/image_raw/compressed") == "/a/image_raw" == B.image_topic_of("/a/image_raw")
    assert B.StereoTopics.under("/s").compressed().compressed().left_image == "/s/left/image_rect/compressed"


def test_reader_takes_compressed_topics_and_checks_types(tmp_path, aloe_small):
    """Bag with both kinds for each camera: detected raw, --left-topic etc. may name the compressed ones."""
    calib = rectified_pair(467.5, 79.5, 69.0, 0.16, 160, 139)
    with B.StereoBagWriter(tmp_path / "bag", storage="mcap") as wr:
        for i in range(2):
            stamp = T0 + i * 100_000_000
            for side, img, cam in (("left", aloe_small[0], calib.left), ("right", aloe_small[1], calib.right)):
                wr.write(f"/cam/{side}/image_raw", B.image_msg(img, "rgb8", stamp, side))
                wr.write(f"/cam/{side}/image_raw/compressed", B.compressed_image_msg(img, "rgb8", stamp, side))
                wr.write(f"/cam/{side}/camera_info", B.camera_info_msg(cam, stamp, side))
    with B.StereoBagReader(tmp_path / "bag") as r:
        assert r.topics.left_image == "/cam/left/image_raw"
        assert [p.left.encoding for p in r.pairs()] == ["rgb8", "rgb8"]
    with B.StereoBagReader(tmp_path / "bag", left_image="/cam/left/image_raw/compressed",
                           right_image="/cam/right/image_raw/compressed") as r:
        pairs = list(r.pairs())
        assert [p.stamp_ns - T0 for p in pairs] == [0, 100_000_000] and r.unpaired == {}
        assert pairs[0].left.format == "rgb8; jpeg compressed bgr8"
        bgr = cv2.imdecode(np.asarray(pairs[0].right.data, np.uint8), cv2.IMREAD_COLOR)
        assert np.abs(bgr[..., ::-1].astype(int) - aloe_small[1].astype(int)).mean() < 6.0
    with pytest.raises(ValueError, match="CameraInfo.*expected .*Image"):
        B.StereoBagReader(tmp_path / "bag", left_image="/cam/left/camera_info")


def test_detection_refuses_to_guess():
    with pytest.raises(ValueError, match="--left-topic"):
        B.detect_topics({"/a/image": B.IMAGE, "/b/image": B.IMAGE})


def test_ground_truth_decoding(opencv_data):
    gt = cv2.imread(str(opencv_data / "aloeGT.png"), cv2.IMREAD_UNCHANGED)[:40, :50].astype(np.float32)
    depth_m = np.where(gt > 0, 3740.0 * 0.16 / np.maximum(gt, 1), 0.0).astype(np.float32)
    mm = np.round(depth_m * 1000).astype(np.uint16)
    z16 = B.gt_depth_array(B.image_msg(mm, "16UC1", T0, "l"))
    np.testing.assert_allclose(z16[mm > 0], mm[mm > 0] / 1000.0, rtol=1e-6)
    assert np.isnan(z16[mm == 0]).all()
    z32 = B.gt_depth_array(B.image_msg(depth_m, "32FC1", T0, "l"))
    np.testing.assert_array_equal(z32[gt > 0], depth_m[gt > 0])

    disp = np.where(gt > 0, gt, np.nan).astype(np.float32)
    msg = B.disparity_msg(disp, T0, "l", 3740.0, 0.16)
    back = B.disparity_array(msg)
    np.testing.assert_array_equal(back[gt > 0], gt[gt > 0])
    assert (back[gt == 0] == 0).all()
    # stereo_image_proc's convention: invalid pixels at min_disparity - 1
    filled = B.disparity_msg(disp, T0, "l", 3740.0, 0.16, min_disparity=30.0, max_disparity=200.0, fill_invalid=True)
    raw = np.asarray(filled.image.data, np.uint8).view("<f4").reshape(40, 50)
    assert (raw[gt == 0] == 29.0).all()
    back = B.disparity_array(filled)
    assert (back[gt == 0] == 0).all() and (back[(gt > 0) & (gt < 30)] == 0).all()


def test_output_messages_are_byte_identical_to_the_nodes(aloe_small):
    """What foundation-stereo-eval writes to its output bag (rosbags, no ROS needed) is field for
    field what the node publishes for the same result (rclpy + the node's conversions)."""
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Header

    from foundation_stereo_ros.pipeline import ALL_OUTPUTS, ProcessorConfig, StereoProcessor
    from foundation_stereo_ros.ros import conversions as C

    calib = rectified_pair(467.5, 79.5, 69.0, 0.16, 160, 139)
    left, right = aloe_small
    proc = StereoProcessor(ProcessorConfig(backend="sgbm", sgbm_num_disparities=32, max_depth=5.0))
    r = proc.process_messages(B.image_msg(left, "rgb8", T0, "cam"), B.image_msg(right, "rgb8", T0, "cam"),
                              B.camera_info_msg(calib.left, T0, "cam"), B.camera_info_msg(calib.right, T0, "cam"),
                              ALL_OUTPUTS)
    assert np.isnan(r.disparity).any() and np.isfinite(r.disparity).any()
    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = T0 // 10**9, T0 % 10**9
    ts = B.typestore()

    def same(ours, node_msg):
        # Compared in rosbags' canonical serialisation: Fast CDR leaves alignment padding unset.
        kind = ours.__msgtype__
        canonical = ts.serialize_cdr(ts.deserialize_cdr(bytes(serialize_message(node_msg)), kind), kind)
        assert bytes(ts.serialize_cdr(ours, kind)) == bytes(canonical)

    same(B.disparity_msg(r.disparity, T0, "cam", r.f, r.t, r.min_disparity, r.max_disparity, r.delta_d,
                         valid_window=r.valid_window, fill_invalid=True), C.disparity_image_msg(r, header))
    same(B.image_msg(r.depth, "32FC1", T0, "cam"), C.numpy_to_image(r.depth, "32FC1", header))
    same(B.pointcloud2_msg(r.points, r.colors, T0, "cam"), C.pointcloud2_msg(r.points, r.colors, header))
    same(B.camera_info_msg(r.camera, T0, "cam"), C.camera_info_msg(r.camera, header))
