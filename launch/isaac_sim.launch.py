"""FoundationStereo depth from a simulated stereo camera in NVIDIA Isaac Sim (ROS 2 bridge).

    ros2 launch foundation_stereo_ros isaac_sim.launch.py

Defaults to the front stereo camera of Isaac Sim's Nova Carter scenes
(/front_stereo_camera/{left,right}/image_rect_color + camera_info) and simulation time; remap
other cameras with left_image:=... etc. Isaac Sim itself is started from its own launcher, so
start_camera has nothing to start. Topics and settings are in config/isaac_sim.yaml.
"""
import importlib.util
import os


def _generic():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "foundation_stereo.launch.py")
    spec = importlib.util.spec_from_file_location("foundation_stereo_generic_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generate_launch_description():
    return _generic().stereo_launch_description(defaults={"config": "isaac_sim"})
