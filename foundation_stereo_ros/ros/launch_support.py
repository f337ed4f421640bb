"""Loading the generic launch file from the per-camera ones (no launch imports here)."""
from __future__ import annotations

import importlib.util
import os
from types import ModuleType

GENERIC_LAUNCH = "foundation_stereo.launch.py"


def generic_launch(launch_dir: str) -> ModuleType:
    """The module of ``foundation_stereo.launch.py`` in ``launch_dir`` (the source tree's launch/
    or the installed share/foundation_stereo_ros/launch/), whose ``stereo_launch_description``
    every camera launch file calls with its own defaults."""
    path = os.path.join(launch_dir, GENERIC_LAUNCH)
    spec = importlib.util.spec_from_file_location("foundation_stereo_generic_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
