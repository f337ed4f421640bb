"""fp16/bf16 weight copies (model/precision.py): made once by autocast's rounding, refreshed when
a weight changes, never for a weight a gradient may reach; the same numbers as plain autocast and
no weight cast left in a pass."""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from foundation_stereo_ros.analysis.simulated import (count_flops, simulated_cuda, simulated_cuda_model,
                                                      simulated_inputs, simulation_problem)
from foundation_stereo_ros.model import FoundationStereo, load_model
from foundation_stereo_ros.model.precision import CastWeights

BF16 = torch.bfloat16
needs_simulation = pytest.mark.skipif(simulation_problem() is not None, reason=str(simulation_problem()))


def _toy() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1, bias=False),
                         nn.Flatten(), nn.Linear(2 * 5 * 5, 3))


def _copied(model: nn.Module, copies) -> dict:
    names = {id(p): n for n, p in model.named_parameters()}
    cw_slots = [getattr(m, n) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
                for n in ("weight", "bias") if getattr(m, n) is not None]
    return {names[id(p)]: c for p, c in zip(cw_slots, copies)}


def test_copies_round_as_autocast_does_and_are_made_once():
    model, cast = _toy(), CastWeights()
    with torch.no_grad():
        first = cast.refresh(model, BF16)
        again = cast.refresh(model, BF16)
    copied = _copied(model, first)
    assert sorted(copied) == ["0.bias", "0.weight", "2.weight", "4.bias", "4.weight"]  # not the norm
    params = dict(model.named_parameters())
    assert all(c.dtype == BF16 and torch.equal(c, params[n].to(BF16)) for n, c in copied.items())
    assert all(a is b for a, b in zip(first, again))  # nothing cast twice
    assert cast.nbytes() == sum(c.nbytes for c in first)
    cast.clear()
    assert cast.nbytes() == 0


def test_a_changed_weight_is_refreshed_in_place():
    model, cast = _toy(), CastWeights()
    with torch.no_grad():
        before = cast.refresh(model, BF16)
        model[0].weight.add_(1.0)  # an optimiser step
        model[4].load_state_dict({"weight": torch.ones(3, 50), "bias": torch.zeros(3)})
        model[2].weight.data = torch.full((2, 4, 1, 1), 0.5)  # new storage, same version counter
        after = cast.refresh(model, BF16)
    assert all(a is b for a, b in zip(before, after))  # the same tensors: graphs keep their addresses
    for name, c in _copied(model, after).items():
        assert torch.equal(c, dict(model.named_parameters())[name].to(BF16)), name


def test_weights_a_gradient_may_reach_are_left_to_autocast():
    model, cast = _toy(), CastWeights()
    model[2].requires_grad_(False)  # frozen, as the monocular branch is
    copied = _copied(model, cast.refresh(model, BF16))  # grad mode on: training
    assert [n for n, c in copied.items() if c is not None] == ["2.weight"]
    with torch.no_grad():
        assert all(c is not None for c in cast.refresh(model, BF16))  # inference: all of them


def test_the_parameters_come_back_even_after_an_error():
    model, cast = _toy(), CastWeights()
    with pytest.raises(RuntimeError, match="inside"), torch.no_grad():
        with cast.swapped_in(model, BF16):
            assert model[0].weight.dtype == BF16 and model[1].weight.dtype == torch.float32
            raise RuntimeError("inside")
    assert all(isinstance(p, nn.Parameter) and p.dtype == torch.float32 for p in model.parameters())
    assert len(list(model.parameters())) == 7


@pytest.fixture(scope="module")
def model(vits_checkpoint):
    return load_model(vits_checkpoint)


def _pair():
    g = torch.Generator().manual_seed(0)
    left = (torch.rand(1, 3, 64, 64, generator=g) * 255).round()
    return left, torch.roll(left, shifts=-4, dims=3)


@pytest.mark.slow
def test_weight_copies_give_plain_autocasts_numbers(model, monkeypatch):
    """With the CPU's bf16 autocast in place of CUDA's (as in test_paths): the pass with the
    copies equals the pass where autocast casts every weight itself, bit for bit; fp32 makes no
    copies and the model's parameters stay float32."""
    left, right = _pair()
    held = model.cast_weights.nbytes()
    with torch.no_grad():
        model(left, right, iters=1)
    assert model.cast_weights.nbytes() == held  # fp32: no copies
    monkeypatch.setattr(FoundationStereo, "_autocast",
                        lambda self, device, precision: torch.autocast("cpu", dtype=BF16, cache_enabled=False))
    with torch.no_grad():
        copies = model(left, right, iters=2, all_iterations=True, precision="bf16")
        assert model.cast_weights.nbytes() > 0
        monkeypatch.setattr(FoundationStereo, "_weights_at", lambda self, precision: contextlib.nullcontext())
        plain = model(left, right, iters=2, all_iterations=True, precision="bf16")
    assert torch.equal(copies.init_disparity, plain.init_disparity)
    assert all(torch.equal(a, b) for a, b in zip(copies.iterations, plain.iterations))
    assert all(isinstance(p, nn.Parameter) and p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.slow
def test_loading_weights_refreshes_the_copies(model):
    """A CUDA graph captured over the copies reads the loaded weights without another pass."""
    conv = model.update_block.encoder.convc1
    with torch.no_grad(), model.cast_weights.swapped_in(model, BF16):
        held = conv.weight  # the copy a captured graph would read
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["update_block.encoder.convc1.weight"] += 1.0
    try:
        model.load_state_dict(state)
        assert held.dtype == BF16 and torch.equal(held, conv.weight.to(BF16))
    finally:
        state["update_block.encoder.convc1.weight"] -= 1.0
        model.load_state_dict(state)


class _WeightCasts(TorchDispatchMode):
    """Counts casts whose input is a (float32) parameter: autocast casting a weight."""

    def __init__(self, model):
        super().__init__()
        self.params = {id(p) for p in model.parameters()}
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ == "_to_copy" and id(args[0]) in self.params:
            self.count += 1
        return func(*args, **(kwargs or {}))


@needs_simulation
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_no_weight_is_cast_during_a_pass(precision):
    """Before the copies autocast cast 78 weights per GRU iteration and some 700 per pass."""
    sim = simulated_cuda_model("vits")
    with simulated_cuda(next(sim.parameters()).fake_mode):
        left, right = simulated_inputs(64, 96)
        counts = []
        for _ in range(2):  # the first pass makes the copies, outside the counted ops
            casts = _WeightCasts(sim)
            with torch.no_grad(), casts:
                sim(left, right, iters=2, precision=precision)
            counts.append(casts.count)
    assert counts == [0, 0]
    assert sim.cast_weights.nbytes() > 0


@needs_simulation
def test_a_gru_iteration_dispatches_few_more_ops_in_bf16():
    """What bf16 adds per iteration are activation casts at autocast's float32 boundaries: the
    lookup and the disparity into the convolutions, the two bilinear resizes of the hidden states
    (float32 under autocast) into the GRUs, the layer-scaled blocks of the disparity head."""
    sim = simulated_cuda_model("vits")
    fp32, bf16 = (count_flops(sim, 64, 96, 2, p)["device_ops_per_gru_iteration"] for p in ("fp32", "bf16"))
    assert fp32 < bf16 <= fp32 + 7, (fp32, bf16)  # 236 and 243; 323 with a cast per weight and call
