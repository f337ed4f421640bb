"""Fine-tuning on the CPU with a tiny configuration: ViT-S, 64x96 synthetic pairs, 2 GRU iterations,
a 64 px cost volume (the published weights do not depend on max_disp).

For CPU time the shared training run also freezes the feature and context encoders (the real
default, only the monocular branch frozen, is checked on one step in
``test_default_side_tuning_freezes_only_the_monocular_branch``).
"""
import csv
import dataclasses
import shutil

import numpy as np
import pytest
import torch

from _training_helpers import synthetic_pairs, write_folder_dataset
from foundation_stereo_ros.model import FoundationStereo, load_model, save_checkpoint
from foundation_stereo_ros.training import (AugmentConfig, FineTuner, StereoAugmentor, TrainConfig, evaluate,
                                            open_dataset, predict, set_train_mode)
from foundation_stereo_ros.training.batches import AugmentedDataset, collate
from foundation_stereo_ros.training.trainer import resolve_precision

pytestmark = pytest.mark.slow  # a short real fine-tuning run (about 20 s) feeds these

ITERS = 2
STEPS = 12
SIZE = (64, 96)
FAST = dict(batch_size=2, lr=1e-3, train_iters=ITERS, valid_iters=ITERS, freeze=("feature", "cnet"),
            warmup_fraction=0.0, final_lr_fraction=1.0, num_workers=0, log_every=1)
DINO = "feature.dino"


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a loaded 2-core machine, two spinning threads per process cost more
    than they gain for these tiny tensors. Restored for the tests that follow."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_state(vits_checkpoint):
    base = load_model(vits_checkpoint)
    return dataclasses.replace(base.cfg, max_disp=64), base.state_dict()


def tiny_model(tiny_state) -> FoundationStereo:
    cfg, state = tiny_state
    model = FoundationStereo(cfg)
    model.load_state_dict(state)
    return model.eval()


@pytest.fixture
def scratch(tmp_path):
    """tmp_path, deleted after the test: runs write ~1 GB of checkpoints and state that pytest
    would otherwise keep for the last three sessions."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    pairs = synthetic_pairs(6, *SIZE, seed=0)
    root = tmp_path_factory.mktemp("synthetic")
    train_root = write_folder_dataset(root / "train", pairs[:4])
    val_root = write_folder_dataset(root / "val", pairs[4:])
    return dict(pairs=pairs, train_root=train_root, val_root=val_root, train=open_dataset(str(train_root)),
                val=open_dataset(str(val_root)))


@pytest.fixture(scope="module")
def trained(tiny_state, data, tmp_path_factory):
    torch.manual_seed(0)
    model = tiny_model(tiny_state)
    before = evaluate(model, data["val"], ITERS)
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(steps=STEPS, val_every=100, save_every=100, **FAST)
    result = FineTuner(model, data["train"], data["val"], config, out, augment=AugmentConfig.crop_only(SIZE),
                       log=quiet).run()
    yield dict(model=model.eval(), before=before, result=result, out=out)
    shutil.rmtree(out, ignore_errors=True)


def test_short_training_lowers_loss_and_validation_epe(trained):
    rows = read_csv(trained["out"] / "train_log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    losses = [float(r["loss"]) for r in rows]
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:2]), losses
    before, after = trained["before"]["epe"], trained["result"]["validation"]["epe"]
    assert after < 0.5 * before, (before, after)
    val_rows = read_csv(trained["out"] / "val_log.csv")
    assert int(val_rows[-1]["step"]) == STEPS and float(val_rows[-1]["epe"]) == pytest.approx(after, rel=1e-4)


def test_saved_checkpoint_reloads_into_the_inference_cli(trained, data, scratch):
    from foundation_stereo_ros.tools import infer

    ckpt = trained["out"] / "last"
    assert (ckpt / "model_best_bp2.pth").is_file() and (ckpt / "cfg.yaml").is_file()
    blob = torch.load(ckpt / "model_best_bp2.pth", map_location="cpu", weights_only=True)
    assert blob["global_step"] == STEPS and set(blob) >= {"model", "epoch"}
    reloaded = load_model(ckpt)  # strict: every key of the published architecture
    assert reloaded.cfg == trained["model"].cfg
    left_png, right_png = data["train_root"] / "left" / "0001.png", data["train_root"] / "right" / "0001.png"
    assert infer.main([str(left_png), str(right_png), "--checkpoint", str(ckpt), "--iters", str(ITERS),
                       "--out-dir", str(scratch)]) == 0
    from_cli = np.load(scratch / "disparity.npy")
    left, right, _ = data["pairs"][1]
    in_memory = predict(trained["model"], left, right, ITERS)
    np.testing.assert_allclose(from_cli, in_memory, rtol=1e-5, atol=1e-4)
    assert (trained["out"] / "best" / "model_best_bp2.pth").is_file()


def test_curate_cli_with_the_finetuned_network(trained, data, scratch):
    """The paper's pass: the fine-tuned model over its own training data plus a corrupted copy
    of one sample (ground truth shifted by 8 px, as a wrong delta_cx would)."""
    from foundation_stereo_ros.tools import curate

    pairs = [data["pairs"][i] for i in range(4)]
    left, right, disp = pairs[0]
    root = write_folder_dataset(scratch / "data", pairs + [(left, right, disp + 8.0)])
    out = scratch / "curation"
    # After a dozen CPU steps the clean samples' EPE is below 2 px but their bad-2 rate is not yet far
    # from the paper's 60 %, so this run uses the (configurable) EPE criterion; the bad-2 rule is
    # exercised with an accurate matcher in test/training/test_curation.py.
    rc = curate.main([str(root), "--checkpoint", str(trained["out"] / "last"), "--iters", str(ITERS),
                      "--output", str(out), "--worst", "2", "--device", "cpu", "--max-bad", "-1", "--max-epe", "4"])
    assert rc == 0
    rejected = (out / "rejected.txt").read_text().splitlines()
    kept = [ln for ln in (out / "kept.txt").read_text().splitlines() if not ln.startswith("#")]
    assert [ln for ln in rejected if not ln.startswith("#")] == [str(root / "left" / "0004.png")]
    assert len(kept) == 4
    report = (out / "report.md").read_text()
    assert len(list((out / "worst").glob("*.png"))) == 2 and "0004" in report and "EPE > 4 px" in report


def test_default_side_tuning_freezes_only_the_monocular_branch(tiny_state, data, scratch):
    model = tiny_model(tiny_state)
    config = TrainConfig(steps=1, batch_size=1, lr=1e-4, train_iters=ITERS, num_workers=0)  # default freeze
    ft = FineTuner(model, data["train"], None, config, scratch, augment=AugmentConfig.crop_only(SIZE), log=quiet)
    names = {id(p): n for n, p in model.named_parameters()}
    in_optimizer = {names[id(p)] for g in ft.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {n for n in names.values() if not n.startswith(DINO + ".")}
    assert not any(p.requires_grad for p in model.get_submodule(DINO).parameters())

    seen = []
    # The DPT head's last convolution: the prior's features leave through it on every path.
    hook = model.get_submodule(DINO).depth_anything.depth_head.scratch.output_conv1.register_forward_hook(
        lambda m, i, o: seen.append((m.training, o.requires_grad)))
    set_train_mode(model, freeze_batchnorm=True)
    assert model.training and model.update_block.training
    assert not any(m.training for m in model.get_submodule(DINO).modules())
    assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = collate([AugmentedDataset(data["train"], StereoAugmentor(AugmentConfig.crop_only(SIZE)))[(0, 0)]])
    row = ft.train_step(batch)
    hook.remove()
    assert np.isfinite(row["loss"]) and seen == [(False, False)]  # ran in eval mode, outside autograd
    for n, p in model.named_parameters():
        if n.startswith(DINO + "."):
            assert p.grad is None and torch.equal(p, before[n]), n
    for prefix in ("feature.stem", "feature.stages", "feature.conv4", "cnet", "corr_stem", "cost_agg", "classifier",
                   "update_block", "spx_gru"):
        params = [(n, p) for n, p in model.named_parameters() if n.startswith(prefix + ".")]
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for _, p in params), prefix
        assert any(not torch.equal(p, before[n]) for n, p in params), prefix


def test_resume_reproduces_an_uninterrupted_run(tiny_state, data, scratch):
    config = TrainConfig(steps=2, val_every=100, save_every=100, **{**FAST, "batch_size": 1})
    augment = AugmentConfig(crop_size=SIZE)  # the real recipe: its randomness must replay too
    straight = tiny_model(tiny_state)
    FineTuner(straight, data["train"], None, config, scratch / "a", augment=augment, log=quiet).run()

    def interrupt_after_step_1(msg: str) -> None:
        if msg.startswith("step 1/2"):
            raise KeyboardInterrupt

    first = tiny_model(tiny_state)
    with pytest.raises(KeyboardInterrupt):
        FineTuner(first, data["train"], None, config, scratch / "b", augment=augment,
                  log=interrupt_after_step_1).run()
    assert torch.load(scratch / "b" / "state.pt", weights_only=True)["step"] == 1
    with pytest.raises(ValueError, match="already holds a run"):
        FineTuner(tiny_model(tiny_state), data["train"], None, config, scratch / "b", augment=augment,
                  log=quiet).run()
    resumed = tiny_model(tiny_state)  # fresh weights: everything must come from state.pt
    FineTuner(resumed, data["train"], None, config, scratch / "b", augment=augment, log=quiet).run(resume=True)
    for (n, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), n
    a_rows, b_rows = read_csv(scratch / "a" / "train_log.csv"), read_csv(scratch / "b" / "train_log.csv")
    assert [r["step"] for r in b_rows] == ["1", "2"]
    assert [r["loss"] for r in a_rows] == [r["loss"] for r in b_rows]


def test_finetune_cli_writes_published_checkpoints_and_resumes(tiny_state, data, scratch):
    from foundation_stereo_ros.tools import finetune

    start = scratch / "start"
    save_checkpoint(tiny_model(tiny_state), start)
    out = scratch / "run"
    skip = scratch / "rejected.txt"
    skip.write_text(f"# from foundation-stereo-curate\n{data['train'].names[3]}\n")
    common = ["--checkpoint", str(start), "--train", f"folder:{data['train_root']}", "--val", str(data["val_root"]),
              "--output", str(out), "--batch-size", "2", "--crop", "64", "96", "--train-iters", str(ITERS),
              "--valid-iters", str(ITERS), "--freeze", "feature", "cnet", "--workers", "0", "--log-every", "1",
              "--lr", "1e-3", "--exclude", str(skip), "--device", "cpu", "--max-val-samples", "1"]
    assert finetune.main(common + ["--steps", "2"]) == 0
    for sub in ("last", "best"):
        assert (out / sub / "model_best_bp2.pth").is_file() and (out / sub / "cfg.yaml").is_file()
    import yaml

    run = yaml.safe_load((out / "run.yaml").read_text())
    assert run["train_samples"] == 3 and run["config"]["freeze"] == ["feature", "cnet"]
    assert finetune.main(common + ["--steps", "2"]) == 2  # refuses to overwrite a run
    assert finetune.main(common + ["--steps", "3", "--resume"]) == 0
    assert [r["step"] for r in read_csv(out / "train_log.csv")] == ["1", "2", "3"]
    assert [r["step"] for r in read_csv(out / "val_log.csv")] == ["2", "3"]
    assert torch.load(out / "last" / "model_best_bp2.pth", weights_only=True)["global_step"] == 3
    assert load_model(out / "last").cfg.max_disp == 64
    assert finetune.main(["--checkpoint", str(scratch / "nowhere"), "--train", str(data["train_root"]),
                          "--output", str(scratch / "x"), "--device", "cpu"]) == 2
    bad_freeze = [a if a != "cnet" else "no_such_module" for a in common]
    assert finetune.main(bad_freeze + ["--output", str(scratch / "y"), "--steps", "1"]) == 2


def test_precision_is_fp32_on_the_cpu_and_mixed_precision_needs_cuda():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    for p in ("bf16", "fp16"):
        with pytest.raises(ValueError, match="CUDA"):
            resolve_precision(p, cpu)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")


@pytest.mark.gpu  # mixed precision exists only on CUDA (CPU path: test above)
@pytest.mark.parametrize("precision", ["auto", "fp16"])
def test_mixed_precision_training_step_on_cuda(tiny_state, data, scratch, precision):
    model = tiny_model(tiny_state).cuda()
    ft = FineTuner(model, data["train"], data["val"], TrainConfig(steps=2, precision=precision, **{**FAST,
                   "freeze": ()}), scratch, augment=AugmentConfig(crop_size=SIZE), log=quiet)
    assert ft.precision in ("bf16", "fp16") and ft.scaler.is_enabled() == (ft.precision == "fp16")
    dino_before = [p.detach().clone() for p in model.get_submodule(DINO).parameters()]
    result = ft.run()
    rows = read_csv(scratch / "train_log.csv")
    assert all(np.isfinite(float(r["loss"])) for r in rows) and np.isfinite(result["validation"]["epe"])
    assert all(torch.equal(a, b) for a, b in zip(dino_before, model.get_submodule(DINO).parameters()))
    assert load_model(scratch / "last").cfg.max_disp == 64
