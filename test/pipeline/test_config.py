"""Processing parameters: spec checks and cross-field validation of ProcessorConfig."""
from __future__ import annotations

import pytest

from foundation_stereo_ros.pipeline import PROCESSOR_PARAMETERS, SPECS, ProcessorConfig, config_problems


def test_defaults_are_valid_and_every_spec_has_a_description():
    cfg = ProcessorConfig()
    for spec in PROCESSOR_PARAMETERS:
        assert spec.check(spec.default) is None, spec.name
        assert len(spec.description) > 20, spec.name
        assert getattr(cfg, spec.name) == spec.default


@pytest.mark.parametrize("name,value,fragment", [
    ("backend", "psmnet", "one of"),
    ("rectify", "sometimes", "one of"),
    ("precision", "int8", "one of"),
    ("iters", 0, ">= 1"),
    ("iters", 2.5, "must be a int"),
    ("scale", 0.0, ">= 0.05"),
    ("scale", float("nan"), "finite"),
    ("sgbm_num_disparities", 40, "multiple of 16"),
    ("sgbm_block_size", 4, "multiple of 2"),
    ("hierarchical", 1, "must be a bool"),
    ("min_depth", -1.0, ">= 0"),
])
def test_single_bad_values_are_rejected_with_a_reason(name, value, fragment):
    with pytest.raises(ValueError, match=fragment):
        ProcessorConfig(**{name: value})


@pytest.mark.parametrize("values,fragment", [
    (dict(min_depth=5.0, max_depth=2.0), "below max_depth"),
    (dict(sgbm_p1=100, sgbm_p2=50), "larger than"),
    (dict(sgbm_p1=100), "both"),
    (dict(device="gpu"), "device"),
    (dict(device="cpu", precision="fp16"), "CUDA"),
])
def test_inconsistent_combinations_are_rejected(values, fragment):
    problems = config_problems(values)
    assert any(fragment in p for p in problems), problems
    with pytest.raises(ValueError):
        ProcessorConfig(**values)


def test_max_depth_zero_means_no_limit_and_ints_become_floats():
    cfg = ProcessorConfig(min_depth=3, max_depth=0.0, scale=1)
    assert isinstance(cfg.scale, float) and isinstance(cfg.min_depth, float)


def test_from_mapping_rejects_unknown_names_unless_asked():
    with pytest.raises(ValueError, match="unknown"):
        ProcessorConfig.from_mapping({"backend": "sgbm", "bogus": 1})
    cfg = ProcessorConfig.from_mapping({"backend": "sgbm", "queue_size": 3}, ignore_unknown=True)
    assert cfg.backend == "sgbm"


def test_backend_key_ignores_per_call_options():
    a = ProcessorConfig(backend="foundation_stereo", checkpoint="x", iters=4)
    assert a.backend_key() == a.replace(iters=8, scale=0.5).backend_key()
    assert a.backend_key() != a.replace(checkpoint="y").backend_key()
    s = ProcessorConfig(backend="sgbm")
    assert s.backend_key() != s.replace(sgbm_block_size=7).backend_key()
    assert SPECS["sgbm_block_size"].check(7) is None
