"""Pure-PyTorch FoundationStereo network: no rclpy, no OpenCV, no side effects on import."""
from .checkpoint import CheckpointError, load_model, save_checkpoint
from .config import FoundationStereoConfig
from .foundation_stereo import FoundationStereo, StereoOutput

__all__ = ["CheckpointError", "FoundationStereo", "FoundationStereoConfig", "StereoOutput", "load_model",
           "save_checkpoint"]
