"""A disparity needs no baseline. image_pipeline's own stereo_image_proc test fixture
(ros-perception/image_pipeline, ``stereo_image_proc/test/fixtures/stereo_image_publisher.py``) publishes
the Aloe pair as bgr8 with a CameraInfo that holds only the size and P = [1 0 1 0; 0 1 1 0; 0 0 1 0]
for both cameras: no baseline (right P[0,3] = 0), empty frame ids. stereo_image_proc publishes a
disparity for it; so must this node - with f = 1 and t = 0 - while depth and points, which need the
baseline, are skipped and counted as ``zero_baseline``."""
from __future__ import annotations

import array
import time

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, Image

from foundation_stereo_ros.ros.conversions import disparity_from_msg

from _ros_helpers import NodeHarness, wait_for

PRODUCTS = ("disparity", "depth", "points2")


def fixture_messages(bgr: np.ndarray, right_tx: float = 0.0):
    """The Image and CameraInfo the stereo_image_proc fixture builds for one image (``right_tx``:
    a P[0,3] to give the right camera a baseline instead)."""
    image = Image()
    image.height, image.width = bgr.shape[:2]
    image.encoding = "bgr8"
    image.step = image.width * 3
    image.data = array.array("B", bgr.tobytes())
    info = CameraInfo()
    info.height, info.width = bgr.shape[:2]
    info.p = [1.0, 0.0, 1.0, right_tx, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    return image, info


@pytest.fixture(scope="module")
def aloe(opencv_data):
    # The fixture publishes cv2.imread's BGR pair; half size keeps SGBM quick here.
    return [cv2.resize(cv2.imread(str(opencv_data / name)), None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
            for name in ("aloeL.jpg", "aloeR.jpg")]


@pytest.fixture(scope="module")
def node():
    h = NodeHarness(dict(backend="sgbm", log_throttle_s=60.0, diagnostics_period_s=0.3), namespace="/aloe_fixture",
                    subscribe=PRODUCTS)
    yield h
    h.close()


def publish_fixture(node, left, right, right_tx=0.0):
    (l_img, l_info), (r_img, r_info) = fixture_messages(left), fixture_messages(right, right_tx)
    stamp = time.time_ns()
    node.publish(l_img, r_img, l_info, r_info, stamp, left_frame="", right_frame="")
    return stamp


def test_the_fixture_pair_gives_a_disparity_and_no_depth(node, aloe):
    before = node.problem_count("zero_baseline")
    stamp = publish_fixture(node, *aloe)
    msg = node.wait_outputs(stamp, ["disparity"])["disparity"]
    assert (msg.f, msg.t) == (1.0, 0.0)
    assert (msg.image.width, msg.image.height) == (aloe[0].shape[1], aloe[0].shape[0])
    assert np.isfinite(disparity_from_msg(msg)).mean() > 0.5
    assert wait_for(lambda: node.problem_count("zero_baseline") > before, 5.0)
    time.sleep(1.0)  # depth and points would be published right after the disparity
    assert node.received.by_stamp("depth", stamp) is None and node.received.by_stamp("points2", stamp) is None
    assert wait_for(lambda: any("[zero_baseline]" in line and "disparity published" in line
                                for line in node.rosout_lines()), 5.0)
    assert wait_for(lambda: node.diagnostic_count("problem.zero_baseline") > before, 5.0)


def test_the_disparity_is_the_one_a_baseline_would_give(node, aloe):
    without = node.wait_outputs(publish_fixture(node, *aloe), ["disparity"])["disparity"]
    stamp = publish_fixture(node, *aloe, right_tx=-0.1)  # the same cameras 0.1 m apart
    with_baseline = node.wait_outputs(stamp, PRODUCTS)
    assert with_baseline["disparity"].t == pytest.approx(0.1)
    assert bytes(without.image.data) == bytes(with_baseline["disparity"].image.data)
    assert with_baseline["depth"].encoding == "32FC1"
