"""Each variant's state dict maps one-to-one onto the published checkpoint's keys and shapes."""
from __future__ import annotations

import socket

import pytest

from conftest import deterministic_weights_module, parity_dir
from foundation_stereo_ros.model import FoundationStereo, FoundationStereoConfig


@pytest.mark.parametrize("vit_size", ["vits", "vitl"])
def test_state_dict_matches_manifest(vit_size):
    rows = deterministic_weights_module().read_manifest(parity_dir() / f"manifest_{vit_size}.tsv")
    published = {name: (shape, dtype) for name, shape, dtype in rows}
    assert len(published) == len(rows), "manifest names are unique"
    state = FoundationStereo(FoundationStereoConfig(vit_size=vit_size)).state_dict()
    assert sorted(set(state) - set(published)) == []
    assert sorted(set(published) - set(state)) == []
    wrong = {k: (tuple(v.shape), published[k][0]) for k, v in state.items()
             if tuple(v.shape) != published[k][0] or v.dtype != published[k][1]}
    assert wrong == {}


def test_building_never_touches_the_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access while building the model")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    model = FoundationStereo(FoundationStereoConfig(vit_size="vits"))
    assert sum(p.numel() for p in model.parameters()) > 1_000_000


def test_monocular_branch_is_frozen():
    model = FoundationStereo(FoundationStereoConfig(vit_size="vits")).train()
    assert not model.feature.dino.training
    assert not any(p.requires_grad for p in model.feature.dino.parameters())
    assert any(p.requires_grad for p in model.feature.stages.parameters())
