"""FoundationStereo depth for a robot with two stereo cameras, served by one node and one network.

    ros2 launch foundation_stereo_ros two_cameras.launch.py

The cameras, their topics and the node's settings are in config/two_cameras.yaml (two RealSense
D4xx infrared pairs started as camera_name:=front and camera_name:=rear); edit a copy for other
cameras and pass it with config:=<path>. Outputs: <namespace>/front/{disparity,depth,points2,...}
and <namespace>/rear/..., one diagnostic status per camera. Start the cameras yourself:
start_camera has no driver to start for two cameras.
"""
import os

from foundation_stereo_ros.ros.launch_support import generic_launch


def _generic():
    return generic_launch(os.path.dirname(os.path.abspath(__file__)))


def generate_launch_description():
    return _generic().stereo_launch_description(defaults={"config": "two_cameras"})
