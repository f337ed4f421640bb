"""FoundationStereo depth from a Luxonis OAK-D (OAK-D, OAK-D Lite, OAK-D Pro ...) via depthai_ros_driver.

    ros2 launch foundation_stereo_ros oakd.launch.py camera_model:=OAK-D start_camera:=true

Uses the two mono cameras' raw images; the node rectifies them with the CameraInfo the driver
publishes (rectify: auto). The driver's own parameters (mono streams on) are in the same file,
config/oakd.yaml, which is passed to the driver as its params_file.
"""
import os

from foundation_stereo_ros.ros.launch_support import generic_launch


def _generic():
    return generic_launch(os.path.dirname(os.path.abspath(__file__)))


EXTRA_ARGUMENTS = (
    ("camera_model", "OAK-D", "Device model for depthai_ros_driver (with start_camera:=true): OAK-D, OAK-D-LITE, "
                              "OAK-D-PRO ..."),
)


def generate_launch_description():
    return _generic().stereo_launch_description(defaults={"config": "oakd"}, extra=EXTRA_ARGUMENTS)
