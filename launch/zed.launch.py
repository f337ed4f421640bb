"""FoundationStereo depth from a Stereolabs ZED, ZED Mini, ZED 2/2i or ZED X/X Mini.

    ros2 launch foundation_stereo_ros zed.launch.py camera_model:=zed2i start_camera:=true

Uses the rectified colour pair of the ZED ROS 2 wrapper (zed_wrapper); topics, encodings and
sync settings are in config/zed.yaml. Every argument of foundation_stereo.launch.py applies.
"""
import os

from foundation_stereo_ros.ros.launch_support import generic_launch


def _generic():
    return generic_launch(os.path.dirname(os.path.abspath(__file__)))


EXTRA_ARGUMENTS = (
    ("camera_model", "zed2i", "ZED model for the wrapper (with start_camera:=true): zed, zedm, zed2, zed2i, zedx, "
                              "zedxm."),
)


def generate_launch_description():
    return _generic().stereo_launch_description(defaults={"config": "zed"}, extra=EXTRA_ARGUMENTS)
