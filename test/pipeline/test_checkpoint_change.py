"""A checkpoint change replaces the loaded network: the new checkpoint is checked where the
parameter changes (the node's executor thread) and loaded by the first frame (the worker), after
the old network has been let go, so the two are never in memory together and no load runs beside
a CUDA-graph capture of the old one."""
from __future__ import annotations

import gc
import shutil
import threading
import weakref

import numpy as np
import pytest

import foundation_stereo_ros.model as model_package
from foundation_stereo_ros.model import CheckpointError
from foundation_stereo_ros.pipeline import InferenceMemoryError, ProcessorConfig, make_backend
from foundation_stereo_ros.pipeline.backends.network import ModelLoadError

pytestmark = pytest.mark.slow  # each test loads ViT-S networks (2-3 s)

PAIR = (np.random.default_rng(0).integers(0, 255, (32, 64, 3), dtype=np.uint8),) * 2


@pytest.fixture(scope="module")
def second_checkpoint(vits_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("other") / "11-33-40"
    shutil.copytree(vits_checkpoint.parent, folder)
    return folder


@pytest.fixture
def loads(monkeypatch):
    """(thread name, checkpoint, whether the previous network was still alive) of each load."""
    real = model_package.load_model
    calls = []
    alive = []

    def load_model(path, device="cpu"):
        calls.append((threading.current_thread().name, str(path), any(r() is not None for r in alive)))
        model = real(path, device=device)
        alive.append(weakref.ref(model))
        return model

    monkeypatch.setattr(model_package, "load_model", load_model)
    return calls


def _config(checkpoint, **kw):
    return ProcessorConfig(**{**dict(backend="foundation_stereo", checkpoint=str(checkpoint), device="cpu", iters=1),
                              **kw})


def test_the_new_network_loads_in_the_worker_after_the_old_one_is_gone(vits_checkpoint, second_checkpoint, loads):
    old = make_backend(_config(vits_checkpoint))
    assert loads == [("MainThread", str(vits_checkpoint), False)]
    new = make_backend(_config(second_checkpoint), previous=old)  # the parameter change
    assert len(loads) == 1 and not new.model_loaded  # checked, not loaded
    assert any("the next frame loads it" in n for n in new.notes)  # the node logs the notes of a new backend
    assert new.max_disp == old.max_disp
    same = make_backend(_config(second_checkpoint, iters=2), previous=new)  # another change before a frame
    del old
    gc.collect()

    result = []
    worker = threading.Thread(target=lambda: result.append(same.compute(*PAIR)), name="worker")
    worker.start()
    worker.join()
    assert result and result[0].shape == (32, 64)
    assert loads[1:] == [("worker", str(second_checkpoint), False)]  # one load, in the worker, old one gone
    assert new.model_loaded and new.model is same.model  # shared by the backends of both changes


def test_an_unusable_checkpoint_is_refused_where_the_parameter_changes(vits_checkpoint, tmp_path, loads):
    old = make_backend(_config(vits_checkpoint))
    (tmp_path / "model_best_bp2.pth").write_text("not a checkpoint")
    shutil.copy(vits_checkpoint.parent / "cfg.yaml", tmp_path / "cfg.yaml")
    with pytest.raises(CheckpointError, match="cannot read the checkpoint"):
        make_backend(_config(tmp_path), previous=old)
    assert len(loads) == 1


def test_a_load_that_fails_at_the_frame_skips_frames_with_the_reason(vits_checkpoint, second_checkpoint,
                                                                      monkeypatch):
    old = make_backend(_config(vits_checkpoint))
    new = make_backend(_config(second_checkpoint), previous=old)
    attempts = []

    def out_of_memory(path, device="cpu"):
        attempts.append(path)
        raise RuntimeError("CUDA out of memory. Tried to allocate 1.50 GiB")

    monkeypatch.setattr(model_package, "load_model", out_of_memory)
    for _ in range(2):  # memory may come back: each frame tries again
        with pytest.raises(InferenceMemoryError, match="loading .* ran out of memory"):
            new.compute(*PAIR)
    assert len(attempts) == 2

    def corrupt(path, device="cpu"):
        attempts.append(path)
        raise CheckpointError(f"{path}: cannot read the checkpoint")

    monkeypatch.setattr(model_package, "load_model", corrupt)
    for _ in range(2):  # anything else is remembered: not reloaded for every frame
        with pytest.raises(ModelLoadError, match="could not be loaded") as e:
            new.compute(*PAIR)
        assert e.value.problem == "model_load_failed"
    assert len(attempts) == 3
