"""Parameters: declared with descriptions and ranges, every one in config/default.yaml."""
from __future__ import annotations

import time
from pathlib import Path

import yaml

from foundation_stereo_ros.ros.parameters import ALL_PARAMETERS, CAMERAS_DESCRIPTION, CAMERAS_PARAMETER, READ_ONLY

from _ros_helpers import NodeHarness, rectified_infos, textured_scene

DEFAULT_YAML = Path(__file__).resolve().parents[2] / "config" / "default.yaml"


def load_default_yaml():
    doc = yaml.safe_load(DEFAULT_YAML.read_text())
    assert list(doc) == ["/**"]
    return doc["/**"]["ros__parameters"]


def test_default_yaml_lists_every_parameter_with_its_default():
    values = load_default_yaml()
    declared = {s.name: s for s in ALL_PARAMETERS}
    assert set(values) == set(declared)
    for name, spec in declared.items():
        assert values[name] == spec.default and type(values[name]) is type(spec.default), name


def test_node_declares_them_with_descriptions_and_ranges_and_runs_with_default_yaml():
    params = load_default_yaml()
    params.update(backend="sgbm", sgbm_num_disparities=32)  # default.yaml's network needs a checkpoint
    h = NodeHarness(params, namespace="/params", subscribe=("disparity",))
    try:
        node = h.node
        names = {n for n in node._parameters if n not in ("use_sim_time", "start_type_description_service")}
        assert names == {s.name for s in ALL_PARAMETERS} | {CAMERAS_PARAMETER}
        cameras = node.describe_parameter(CAMERAS_PARAMETER)
        assert cameras.read_only and cameras.description == CAMERAS_DESCRIPTION
        assert [c.name for c in node.cameras] == [""]  # unset: one camera on the node's own topics
        for spec in ALL_PARAMETERS:
            d = node.describe_parameter(spec.name)
            assert d.description == spec.description, spec.name
            assert d.read_only == (spec.name in READ_ONLY), spec.name
            if spec.min is not None:
                rng = (d.integer_range or d.floating_point_range)[0]
                assert (rng.from_value, rng.to_value) == (spec.min, spec.max), spec.name
            if spec.choices:
                assert all(c in d.additional_constraints for c in spec.choices), spec.name
        left, right, _ = textured_scene(48, 160)
        stamp = time.time_ns()
        h.publish_arrays(left, right, "rgb8", rectified_infos(160, 48, 100.0, 0.1, 80, 80, 24), stamp)
        h.wait_outputs(stamp, ["disparity"])
    finally:
        h.close()
