"""FoundationStereo depth from a Stereolabs ZED, ZED Mini, ZED 2/2i or ZED X/X Mini.

    ros2 launch foundation_stereo_ros zed.launch.py camera_model:=zed2i start_camera:=true

Uses the rectified colour pair of the ZED ROS 2 wrapper (zed_wrapper); topics, encodings and
sync settings are in config/zed.yaml. Every argument of foundation_stereo.launch.py applies.
"""
import importlib.util
import os


def _generic():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "foundation_stereo.launch.py")
    spec = importlib.util.spec_from_file_location("foundation_stereo_generic_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXTRA_ARGUMENTS = (
    ("camera_model", "zed2i", "ZED model for the wrapper (with start_camera:=true): zed, zedm, zed2, zed2i, zedx, "
                              "zedxm."),
)


def generate_launch_description():
    return _generic().stereo_launch_description(defaults={"config": "zed"}, extra=EXTRA_ARGUMENTS)
