"""``image_transport: compressed`` through the live node: the Aloe pair (Debian's opencv-doc) over
CompressedImage topics gives, bit for bit, the disparity it gives over raw topics when PNG-compressed,
and a measured difference when JPEG-compressed (printed: run with ``-s`` to see it). A corrupt or
truncated JPEG, an unknown format and a wrong size are skipped frames with their own problem key,
and the next frame is answered."""
from __future__ import annotations

import array
import time

import cv2
import numpy as np
import pytest
import rclpy
from rclpy.context import Context
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from foundation_stereo_ros.ros.conversions import disparity_from_msg, numpy_to_image
from foundation_stereo_ros.ros.camera import input_topics

from _ros_helpers import NodeHarness, domain_id_for_tests, rectified_infos, wait_for

SCALE = 1 / 3  # 427 x 370: Middlebury's third size, fast for SGBM
F, B = 3740.0 * SCALE, 0.160  # Middlebury 2006 focal length and baseline at this size
PARAMS = dict(backend="sgbm", sgbm_num_disparities=96, queue_size=3, log_throttle_s=60.0, diagnostics_period_s=0.3)
JPEG_QUALITY = 95  # compressed_image_transport's default jpeg_quality
PNG_LEVEL = 3  # and png_level


@pytest.fixture(scope="module")
def aloe(opencv_data):
    """(left, right) BGR uint8 and their CameraInfo pair."""
    pair = [cv2.resize(cv2.imread(str(opencv_data / name)), None, fx=SCALE, fy=SCALE, interpolation=cv2.INTER_AREA)
            for name in ("aloeL.jpg", "aloeR.jpg")]
    h, w = pair[0].shape[:2]
    return pair[0], pair[1], (w, h)


def infos(size):
    w, h = size
    return rectified_infos(w, h, F, B, w / 2, w / 2, h / 2)


def compressed(bgr: np.ndarray, codec: str, source_encoding: str = "bgr8") -> CompressedImage:
    """What compressed_image_transport publishes for a bgr8 image (format string and data)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if codec == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL]
    ok, data = cv2.imencode(".jpg" if codec == "jpeg" else ".png", bgr, params)
    assert ok
    msg = CompressedImage()
    msg.format = f"{source_encoding}; {codec} compressed bgr8"
    msg.data = array.array("B", data.tobytes())
    return msg


def send(node, left, right, size, **publish_options):
    stamp = time.time_ns()
    node.publish(left, right, *infos(size), stamp, **publish_options)
    return stamp


@pytest.fixture(scope="module")
def raw_disparity(aloe):
    """The node's disparity of the pair over raw Image topics."""
    left, right, size = aloe
    h = NodeHarness(PARAMS, namespace="/raw_aloe", subscribe=("disparity",))
    try:
        stamp = send(h, numpy_to_image(left, "bgr8"), numpy_to_image(right, "bgr8"), size)
        return h.wait_outputs(stamp, ["disparity"])["disparity"]
    finally:
        h.close()


@pytest.fixture(scope="module")
def node():
    h = NodeHarness(dict(PARAMS, image_transport="compressed"), namespace="/compressed_aloe",
                    subscribe=("disparity", "depth"))
    yield h
    h.close()


def test_png_gives_the_raw_disparity_bit_for_bit(node, aloe, raw_disparity):
    left, right, size = aloe
    stamp = send(node, compressed(left, "png"), compressed(right, "png"), size)
    out = node.wait_outputs(stamp, ["disparity", "depth"])["disparity"]
    assert out.image.encoding == raw_disparity.image.encoding == "32FC1"
    assert bytes(out.image.data) == bytes(raw_disparity.image.data)
    assert (out.f, out.t, out.min_disparity, out.max_disparity, out.delta_d) == (
        raw_disparity.f, raw_disparity.t, raw_disparity.min_disparity, raw_disparity.max_disparity,
        raw_disparity.delta_d)
    assert np.isfinite(disparity_from_msg(out)).mean() > 0.5


def test_jpeg_gives_a_measured_difference(node, aloe, raw_disparity):
    left, right, size = aloe
    stamp = send(node, compressed(left, "jpeg"), compressed(right, "jpeg"), size)
    jpeg = disparity_from_msg(node.wait_outputs(stamp, ["disparity"])["disparity"])
    raw = disparity_from_msg(raw_disparity)
    both = np.isfinite(raw) & np.isfinite(jpeg)
    diff = np.abs(jpeg - raw)[both]
    print(f"\nAloe {size[0]}x{size[1]}, SGBM 96 disparities, JPEG quality {JPEG_QUALITY} against raw: valid "
          f"{np.isfinite(raw).mean():.1%} raw / {np.isfinite(jpeg).mean():.1%} JPEG, {both.mean():.1%} in both; "
          f"|difference| mean {diff.mean():.3f} px, median {np.median(diff):.3f} px, > 1 px on {(diff > 1).mean():.2%}"
          f", > 3 px on {(diff > 3).mean():.2%} of the pixels valid in both")
    assert not np.array_equal(jpeg, raw, equal_nan=True)  # lossy: not the raw disparity ...
    assert both.mean() > 0.9 * np.isfinite(raw).mean()  # ... but close to it
    assert diff.mean() < 0.5 and (diff > 1).mean() < 0.03


def truncated(msg: CompressedImage) -> CompressedImage:
    msg.data = msg.data[: len(msg.data) * 3 // 4]
    return msg


def corrupt(msg: CompressedImage) -> CompressedImage:
    data = bytearray(msg.data)
    data[2:64] = bytes(62)  # the segments after the start-of-image marker are overwritten
    msg.data = array.array("B", bytes(data))
    return msg


def depth_format(msg: CompressedImage) -> CompressedImage:
    msg.format = "16UC1; compressedDepth png"
    return msg


def downscaled(msg: CompressedImage) -> CompressedImage:
    ok, data = cv2.imencode(".jpg", cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)[::2, ::2])
    msg.data = array.array("B", data.tobytes())
    return msg


@pytest.mark.parametrize("spoil,problem", [(truncated, "compressed_truncated"), (corrupt, "compressed_corrupt"),
                                           (depth_format, "compressed_format"), (downscaled, "compressed_size")],
                         ids=["truncated JPEG", "corrupt JPEG", "compressedDepth", "another size"])
def test_bad_compressed_frame_is_skipped_with_its_key_and_the_next_is_answered(node, aloe, spoil, problem):
    left, right, size = aloe
    before = node.problem_count(problem)
    bad_stamp = send(node, spoil(compressed(left, "jpeg")), compressed(right, "jpeg"), size)
    assert wait_for(lambda: node.problem_count(problem) > before, 10.0), node.node._stats.problems
    good_stamp = send(node, compressed(left, "jpeg"), compressed(right, "jpeg"), size)
    node.wait_outputs(good_stamp, ["disparity", "depth"])
    assert node.received.by_stamp("disparity", bad_stamp) is None and node.received.by_stamp("depth", bad_stamp) is None
    assert wait_for(lambda: any(f"[{problem}]" in line for line in node.rosout_lines()), 5.0)
    assert wait_for(lambda: node.diagnostic_count(f"problem.{problem}") > before, 5.0)


def test_compressed_topics_follow_remaps_of_the_image_topics():
    context = Context()
    rclpy.init(context=context, domain_id=domain_id_for_tests(7))
    try:
        node = rclpy.create_node("remapped", namespace="/stereo", context=context,
                                 cli_args=["--ros-args", "-r", "left/image_rect:=/zed/left/image_rect_color"])
        topics = dict(input_topics(node, "compressed"))
        assert topics == {"/zed/left/image_rect_color/compressed": CompressedImage,
                          "/stereo/right/image_rect/compressed": CompressedImage,
                          "left/camera_info": CameraInfo, "right/camera_info": CameraInfo}
        assert dict(input_topics(node, "raw"))["left/image_rect"] is Image
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
