"""The parameter policy of the node (foundation_stereo_ros.ros.parameters) without a node: the
descriptors it declares, the settings it starts with, and which runtime changes it accepts."""
from __future__ import annotations

import pytest

from foundation_stereo_ros.ros.parameters import (ALL_PARAMETERS, NODE_PARAMETERS, READ_ONLY, StartupError,
                                                  change_parameters, initial_settings, parameter_descriptor)

DEFAULTS = {s.name: s.default for s in ALL_PARAMETERS}


def sgbm_values(**changes):
    values = dict(DEFAULTS, backend="sgbm", sgbm_num_disparities=32)
    values.update(changes)
    return values


def test_descriptors_carry_description_range_choices_and_read_only():
    specs = {s.name: s for s in ALL_PARAMETERS}
    queue = parameter_descriptor(specs["queue_size"])
    assert queue.read_only and queue.description == specs["queue_size"].description
    assert (queue.integer_range[0].from_value, queue.integer_range[0].to_value, queue.integer_range[0].step) == (
        1, 100, 1)
    throttle = parameter_descriptor(specs["log_throttle_s"])
    assert not throttle.read_only
    assert (throttle.floating_point_range[0].from_value, throttle.floating_point_range[0].to_value) == (0.0, 3600.0)
    reliability = parameter_descriptor(specs["qos_reliability"])
    assert reliability.additional_constraints == "one of: best_effort, reliable"
    assert READ_ONLY <= {s.name for s in NODE_PARAMETERS}


def test_initial_settings_from_valid_values_and_a_startup_error_naming_each_bad_one():
    settings = initial_settings(sgbm_values(points_organized=False))
    assert settings.processor.config.sgbm_num_disparities == 32 and settings.points_organized is False
    with pytest.raises(StartupError, match="invalid parameters: .*queue_size"):
        initial_settings(sgbm_values(queue_size=0))


def test_a_change_of_an_output_option_keeps_the_processor():
    base = initial_settings(sgbm_values())
    change = change_parameters(base, sgbm_values(), {"points_organized": False})
    assert change.accepted and change.reason == "" and change.notes == ()
    assert change.settings.processor is base.processor and change.settings.points_organized is False
    assert base.points_organized is True  # the settings of frames in flight stay as they were


def test_a_change_of_a_processing_parameter_reconfigures_the_processor():
    base = initial_settings(sgbm_values())
    change = change_parameters(base, sgbm_values(), {"sgbm_num_disparities": 48})
    assert change.accepted
    assert change.settings.processor.config.sgbm_num_disparities == 48
    assert base.processor.config.sgbm_num_disparities == 32


@pytest.mark.parametrize("changes,fragment", [
    ({"log_throttle_s": -1.0}, "log_throttle_s"),
    ({"sgbm_num_disparities": 33}, "sgbm_num_disparities"),
    ({"backend": "onnx"}, "onnx_model"),
])
def test_an_invalid_change_is_refused_with_the_reason(changes, fragment):
    base = initial_settings(sgbm_values())
    change = change_parameters(base, sgbm_values(), changes)
    assert not change.accepted and change.settings is None
    assert fragment in change.reason
