"""foundation_stereo_ros: zero-shot stereo depth for ROS 2 with the FoundationStereo network."""

__version__ = "0.1.0"
