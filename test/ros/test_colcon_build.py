"""The package builds with colcon as a ROS user builds it, and what colcon installs works.

On a robot the package lives in a colcon workspace (``colcon build``, then ``source
install/setup.bash`` and ``ros2 run`` / ``ros2 launch``). ``ros2 run`` finds executables in
``lib/<package>``, ``ros2 launch`` finds launch files through the ament index in
``share/<package>``, and the launch files find ``config/`` beside them. These tests build a copy
of this source tree in a temporary workspace, plain and ``--symlink-install``, and check each of
those places, then run the installed node and CLI from the install space.
"""
from __future__ import annotations

import configparser
import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

from _colcon import COLCON, PACKAGE, REPO, colcon_build, in_install_space

pytestmark = [pytest.mark.slow,  # colcon builds of the package
              pytest.mark.skipif(not COLCON.is_file(), reason=f"colcon is not installed beside {sys.executable} "
                                                              f"(scripts/setup_env.sh installs it)")]


def _console_scripts() -> list:
    text = (REPO / "setup.py").read_text()
    return re.findall(r'"([A-Za-z0-9_.-]+) = foundation_stereo_ros\.[A-Za-z0-9_.]+:main"', text)


@pytest.fixture(scope="module", params=["copy", "symlink"])
def install(request, colcon_install, tmp_path_factory) -> Path:
    if request.param == "copy":
        return colcon_install  # the session's plain build, shared with the launch tests
    return colcon_build(tmp_path_factory.mktemp("colcon_symlink"), "--symlink-install")


def test_setup_cfg_puts_executables_where_ros2_run_looks():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert cfg["develop"]["script_dir"] == f"$base/lib/{PACKAGE}"
    assert cfg["install"]["install_scripts"] == f"$base/lib/{PACKAGE}"


def test_install_tree_has_index_marker_share_files_and_executables(install):
    prefix = install / PACKAGE
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE).is_file()
    share = prefix / "share" / PACKAGE
    assert (share / "package.xml").read_text() == (REPO / "package.xml").read_text()
    for folder, pattern in (("launch", "*.launch.py"), ("config", "*.yaml")):
        source = sorted(p.name for p in (REPO / folder).glob(pattern))
        assert source, folder
        assert sorted(p.name for p in (share / folder).glob(pattern)) == source, folder
        for name in source:
            assert (share / folder / name).read_text() == (REPO / folder / name).read_text()
    # The Fast DDS profile: package data (found by the node) and, from the same file, in config/.
    profile = REPO / PACKAGE / "ros" / "fastdds_large_data.xml"
    assert (share / "config" / profile.name).read_text() == profile.read_text()
    proc = in_install_space(install, f"{sys.executable} -c 'from {PACKAGE}.ros import dds; "
                                     f"print(dds.LARGE_DATA_PROFILE)'")  # where the node looks for it
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).read_text() == profile.read_text()
    scripts = _console_scripts()
    assert "stereo_depth_node" in scripts and len(scripts) >= 10
    lib = prefix / "lib" / PACKAGE
    for name in scripts:
        assert (lib / name).is_file() and os.access(lib / name, os.X_OK), name


def test_installed_package_is_imported_from_the_install_space(install):
    proc = in_install_space(install, f"{sys.executable} -c 'import {PACKAGE}; print({PACKAGE}.__file__)'")
    assert proc.returncode == 0, proc.stderr
    where = Path(proc.stdout.strip()).resolve()
    # Plain install: a copy under install/. Symlink install: the build's link back to the source
    # copy in the workspace (not this checkout).
    assert str(install.parent) in str(where), where


def test_installed_node_executable_runs_and_refuses_bad_parameters(install):
    exe = install / PACKAGE / "lib" / PACKAGE / "stereo_depth_node"
    proc = in_install_space(install, f"{exe} --ros-args -p backend:=no_such_backend -p use_sim_time:=false")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "cannot start" in proc.stderr + proc.stdout
    assert "backend" in proc.stderr + proc.stdout


def test_installed_cli_runs(install):
    exe = install / PACKAGE / "lib" / PACKAGE / "foundation-stereo-infer"
    proc = in_install_space(install, f"{exe} --help")
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower()


def test_installed_launch_files_find_their_config(install):
    share = install / PACKAGE / "share" / PACKAGE
    spec = importlib.util.spec_from_file_location("installed_launch", share / "launch" / "foundation_stereo.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for camera in ("default", "zed", "realsense", "oakd", "isaac_sim"):
        path = Path(module.config_path(camera))
        assert path.is_file()
        assert path.resolve().parent == (share / "config").resolve() or path.parent == share / "config", path
