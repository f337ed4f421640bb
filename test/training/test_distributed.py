"""foundation-stereo-finetune under torchrun: two gloo processes on 127.0.0.1, CPU only.

The tiny configuration of test_run.py (ViT-S at max_disp 64, 64x96 synthetic pairs, 2 GRU
iterations, feature and context encoders frozen) with the real augmentation recipe. Every
process started here runs under a timeout, so no test can hang CI.
"""
import csv
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from _training_helpers import synthetic_pairs, write_folder_dataset
from foundation_stereo_ros.model import FoundationStereo, load_model, save_checkpoint
from foundation_stereo_ros.tools import finetune

pytestmark = pytest.mark.slow  # each torchrun launch starts two Python processes with PyTorch

STEPS = 3  # 4 samples, global batch 2: the third step starts the second epoch
LAUNCH_TIMEOUT_S = 240

# Run as a script by the launched processes: finetune.main, optionally made to crash after saving
# the state of step STOP_AFTER_SAVE (an interrupted run) or to die in step DIE_AT_STEP on rank 1.
SCRIPT = textwrap.dedent("""
    import os, sys
    from foundation_stereo_ros.tools import finetune
    from foundation_stereo_ros.training.trainer import FineTuner

    stop, die = int(os.environ.get("STOP_AFTER_SAVE", "-1")), int(os.environ.get("DIE_AT_STEP", "-1"))
    save, step = FineTuner.save_state, FineTuner.train_step

    def save_then_stop(self, *a, **k):
        save(self, *a, **k)
        if self.step == stop:
            os._exit(0)

    def step_or_die(self, batch):
        if self.step == die and os.environ["RANK"] == "1":
            os._exit(3)
        return step(self, batch)

    FineTuner.save_state, FineTuner.train_step = save_then_stop, step_or_die
    sys.exit(finetune.main(sys.argv[1:]))
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", **{k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread, as the launched processes have (OMP_NUM_THREADS=1): the CPU kernels'
    reduction order, and so the float rounding of the gradients, depends on the thread count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def setup(vits_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    base = load_model(vits_checkpoint)
    import dataclasses

    model = FoundationStereo(dataclasses.replace(base.cfg, max_disp=64))
    model.load_state_dict(base.state_dict())
    save_checkpoint(model, root / "start")
    data = write_folder_dataset(root / "data", synthetic_pairs(4, 64, 96, seed=1))
    script = root / "ddp_finetune.py"
    script.write_text(SCRIPT)
    yield dict(root=root, start=root / "start", data=data, script=script)
    shutil.rmtree(root, ignore_errors=True)


def args(setup, out, batch_size: int, *extra: str) -> list:
    return ["--checkpoint", str(setup["start"]), "--train", f"folder:{setup['data']}", "--output", str(out),
            "--steps", str(STEPS), "--batch-size", str(batch_size), "--crop", "64", "96", "--train-iters", "2",
            "--freeze", "feature", "cnet", "--workers", "0", "--log-every", "1", "--save-every", "1",
            "--val-fraction", "0", "--lr", "1e-4", "--warmup", "0", "--device", "cpu", "--dist-timeout", "60",
            *extra]


def torchrun(setup, argv: list, **env) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(setup["script"]), *argv]
    return subprocess.run(cmd, env=child_env(**env), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)


def weights(out) -> dict:
    return torch.load(out / "last" / "model_best_bp2.pth", map_location="cpu", weights_only=True)["model"]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def losses(out) -> list:
    with open(out / "train_log.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def single(setup):
    """One process with the global batch of two processes with batch 1: two accumulated batches
    of 1, whose gradients add up as DDP's all-reduce adds them. (One forward pass of batch 2 sums
    the same gradients in another order; AdamW turns that float rounding in gradients near zero
    into updates that differ by up to about a quarter of lr after 3 steps, so the exact reference
    is this one; test_loss checks that the parts' losses add up to the whole batch's.)"""
    out = setup["root"] / "single"
    assert finetune.main(args(setup, out, 1, "--accumulate", "2")) == 0
    return dict(weights=weights(out), losses=losses(out))


@pytest.fixture(scope="module")
def two_processes(setup):
    out = setup["root"] / "ddp"
    run = torchrun(setup, args(setup, out, 1))
    assert run.returncode == 0, run.stderr[-4000:]
    return dict(out=out, weights=weights(out), stderr=run.stderr)


def test_two_processes_train_as_one_with_the_same_global_batch(setup, single, two_processes):
    start = load_model(setup["start"]).state_dict()
    assert max_difference(single["weights"], start) > 1e-4  # the steps changed the weights ...
    assert max_difference(two_processes["weights"], single["weights"]) < 1e-6  # ... the same way
    assert losses(two_processes["out"]) == pytest.approx(single["losses"], rel=1e-6)
    for name in start:  # the frozen monocular branch stayed as it was
        if name.startswith("feature.dino."):
            assert torch.equal(two_processes["weights"][name], start[name]), name
    log = two_processes["stderr"]
    assert "2 processes; global batch 2" in log and log.count(f"step {STEPS}/{STEPS}") == 1  # rank 0 logs alone
    state = torch.load(two_processes["out"] / "state.pt", weights_only=True)
    assert state["sampler"] == {"epoch": 1, "batch": 1, "world_size": 2, "per_step": 1}
    assert len(state["rank_rng"]) == 2 and not torch.equal(state["rank_rng"][0]["torch"],
                                                           state["rank_rng"][1]["torch"])


def test_interrupted_and_resumed_run_ends_as_the_uninterrupted_one(setup, two_processes):
    out = setup["root"] / "resumed"
    first = torchrun(setup, args(setup, out, 1), STOP_AFTER_SAVE=1)  # both processes end after step 1's save
    assert first.returncode == 0, first.stderr[-4000:]
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 1
    second = torchrun(setup, args(setup, out, 1, "--resume"))
    assert second.returncode == 0, second.stderr[-4000:]
    assert "resumed from" in second.stderr
    assert max_difference(weights(out), two_processes["weights"]) == 0.0


def test_a_dead_rank_stops_the_other_with_an_error(setup):
    """Two processes started by hand (no torchrun to clean up after them): rank 1 dies in step 1,
    rank 0 must stop by itself with a clear error."""
    out = setup["root"] / "dead"
    env = dict(WORLD_SIZE=2, MASTER_PORT=free_port(), DIE_AT_STEP=1)
    procs = [subprocess.Popen([sys.executable, str(setup["script"]), *args(setup, out, 1, "--dist-timeout", "30")],
                              env=child_env(RANK=r, LOCAL_RANK=r, **env), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        results = [p.communicate(timeout=LAUNCH_TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[1].returncode == 3
    assert procs[0].returncode == 1, results[0][1][-4000:]
    assert "error: rank 0: lost contact with the other processes" in results[0][1]


def test_curate_jobs_2_gives_the_results_of_jobs_1(setup, tmp_path):
    from foundation_stereo_ros.tools import curate

    common = [f"folder:{setup['data']}", "--checkpoint", str(setup["start"]), "--iters", "1", "--device", "cpu",
              "--worst", "2", "--max-bad", "-1", "--max-epe", "10"]
    assert curate.main(common + ["--output", str(tmp_path / "one")]) == 0
    assert curate.main(common + ["--output", str(tmp_path / "two"), "--jobs", "2"]) == 0
    for name in ("scores.csv", "kept.txt", "rejected.txt", "report.md"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text(), name
    for picture in (tmp_path / "one" / "worst").glob("*.png"):
        assert picture.read_bytes() == (tmp_path / "two" / "worst" / picture.name).read_bytes()
    assert len(list((tmp_path / "one" / "worst").glob("*.png"))) == 2
