"""Fast DDS for camera images and point clouds: the package's profile, and when it is loaded.

Fast DDS (the default RMW of Humble, Jazzy and Kilted) gives each process a 512 KiB
shared-memory segment, too small for the samples a stereo node exchanges (0.9 MB per 640x480 RGB
image, 4.9 MB per point cloud of it): a best-effort reader then loses samples on an idle machine,
and reliable writers fragment and resend. ``fastdds_large_data.xml`` (beside this module,
installed also as ``share/foundation_stereo_ros/config/fastdds_large_data.xml``) gives each
process a 32 MiB segment; its comment has the measurements.

It is loaded by environment variable, which must be set before the process's first DDS
participant (``rclpy.init``). The node's ``main`` and the launch files set it unless the user has
chosen a Fast DDS profile already, runs another RMW, or sets ``FOUNDATION_STEREO_DDS_PROFILE``
(``none``: Fast DDS's defaults; a path: that profile).
"""
from __future__ import annotations

import os
from typing import Mapping, MutableMapping, Optional

#: The package's profile (package data, so it is found in every kind of install).
LARGE_DATA_PROFILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fastdds_large_data.xml")
#: Fast DDS 2.x (Humble, Jazzy) reads the first, Fast DDS 3.x (Kilted) the second.
PROFILE_VARIABLES = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")
#: The user's choice: unset or empty for the package's profile, ``none`` for Fast DDS's defaults,
#: or the path of another profile.
CHOICE_VARIABLE = "FOUNDATION_STEREO_DDS_PROFILE"


def uses_fast_dds(environ: Mapping[str, str]) -> bool:
    """Whether ROS 2 runs Fast DDS here: RMW_IMPLEMENTATION unset (its default) or rmw_fastrtps_*."""
    rmw = environ.get("RMW_IMPLEMENTATION", "")
    return not rmw or rmw.startswith("rmw_fastrtps")


def profile_environment(environ: Mapping[str, str], choice: Optional[str] = None) -> dict:
    """The variables to add to ``environ`` so that the processes started with it load a profile.

    ``choice`` (default ``environ[CHOICE_VARIABLE]``): a path loads that profile; ``none`` adds
    nothing; empty loads the package's profile unless the user already set one of
    :data:`PROFILE_VARIABLES`. Nothing either when another RMW runs. Raises ValueError for a chosen
    profile that does not exist."""
    choice = (environ.get(CHOICE_VARIABLE, "") if choice is None else choice).strip()
    if choice.lower() == "none" or not uses_fast_dds(environ):
        return {}
    if not choice and any(environ.get(v) for v in PROFILE_VARIABLES):
        return {}  # the user's own profile
    path = os.path.abspath(os.path.expanduser(choice)) if choice else LARGE_DATA_PROFILE
    if not os.path.isfile(path):
        raise ValueError(f"Fast DDS profile {path} not found ({CHOICE_VARIABLE} / dds_profile; 'none' keeps "
                         f"Fast DDS's defaults)")
    return {v: path for v in PROFILE_VARIABLES}


def use_profile(environ: MutableMapping[str, str] = os.environ, choice: Optional[str] = None) -> Optional[str]:
    """Set :func:`profile_environment` in ``environ`` (this process's, before its first
    ``rclpy.init``); the profile's path, or None when nothing was set."""
    added = profile_environment(environ, choice)
    environ.update(added)
    return next(iter(added.values()), None)
