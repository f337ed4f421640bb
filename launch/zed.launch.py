"""FoundationStereo depth from a Stereolabs ZED, ZED Mini, ZED 2/2i or ZED X/X Mini/X Nano.

    ros2 launch foundation_stereo_ros zed.launch.py camera_model:=zed2i start_camera:=true

Uses the rectified colour pair of the ZED ROS 2 wrapper (zed_wrapper): the topic names of wrapper
5.1 and later by default, those of 4.x and 5.0 with zed_topics:=legacy. With start_camera:=true the
wrapper is told to advertise its left/right topics (video.publish_left_right, off by default since
5.1). Topics, encodings and sync settings are in config/zed.yaml. Every argument of
foundation_stereo.launch.py applies.
"""
import os

from foundation_stereo_ros.ros.launch_support import generic_launch


def _generic():
    return generic_launch(os.path.dirname(os.path.abspath(__file__)))


EXTRA_ARGUMENTS = (
    ("camera_model", "zed2i", "ZED model for the wrapper (with start_camera:=true): zed, zedm, zed2, zed2i, zedx, "
                              "zedxm, zedxnano, zedxhdr, zedxhdrmini, zedxhdrmax."),
    ("zed_topics", "", "Topic names of the wrapper: empty for zed-ros2-wrapper 5.1 and later "
                       "(left/color/rect/image), 'legacy' for 4.x and 5.0 (left/image_rect_color)."),
)


def generate_launch_description():
    return _generic().stereo_launch_description(defaults={"config": "zed"}, extra=EXTRA_ARGUMENTS)
