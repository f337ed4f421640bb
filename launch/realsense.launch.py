"""FoundationStereo depth from the infrared pair of an Intel RealSense D4xx (D415, D435, D455 ...).

    ros2 launch foundation_stereo_ros realsense.launch.py start_camera:=true emitter:=0

The two infrared imagers (infra1 = left, infra2 = right) are rectified on the camera; the node
matches them as grey images fed to the network as three equal channels. The reference
(NVlabs/FoundationStereo) reports that IR pairs from the D4xx work well; keep the IR dot projector
off (emitter:=0, the default) for input like the network's training images, and try emitter:=1 on
bare, textureless surfaces, comparing both with foundation-stereo-eval on a recording.
Topics and settings are in config/realsense.yaml.
"""
import os

from foundation_stereo_ros.ros.launch_support import generic_launch


def _generic():
    return generic_launch(os.path.dirname(os.path.abspath(__file__)))


EXTRA_ARGUMENTS = (
    ("emitter", "0", "RealSense IR dot projector with start_camera:=true: 0 off (default, passive stereo), "
                     "1 on."),
)


def generate_launch_description():
    return _generic().stereo_launch_description(defaults={"config": "realsense"}, extra=EXTRA_ARGUMENTS)
