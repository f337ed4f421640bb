"""FoundationStereo depth from a simulated stereo camera in NVIDIA Isaac Sim (ROS 2 bridge).

    ros2 launch foundation_stereo_ros isaac_sim.launch.py

Defaults to the front stereo camera of Isaac Sim's Nova Carter scenes
(/front_stereo_camera/{left,right}/image_raw + camera_info) and simulation time; remap
other cameras with left_image:=... etc. Isaac Sim itself is started from its own launcher, so
start_camera has nothing to start. Topics and settings are in config/isaac_sim.yaml.
"""
import os

from foundation_stereo_ros.ros.launch_support import generic_launch


def _generic():
    return generic_launch(os.path.dirname(os.path.abspath(__file__)))


def generate_launch_description():
    return _generic().stereo_launch_description(defaults={"config": "isaac_sim"})
