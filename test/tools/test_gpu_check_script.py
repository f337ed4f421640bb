"""scripts/gpu_check.sh runs its checks only on a GPU machine, which CI never has. Here: every
test file it names exists, every tool command line of a GPU run (``--plan``) is accepted by that
tool's parser, the checks fit the time budget, ``--prepare`` stages the inputs a bare GPU machine
lacks, and ``--dry-run`` runs every check end to end on the CPU and reports each one."""
from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.sh"
BUDGET_S = 8 * 60  # a GPU machine is lent for about this long per run


def _plan(tmp_path):
    out = subprocess.run(["bash", str(SCRIPT), "--plan"], capture_output=True, text=True, check=True, cwd=tmp_path,
                         env=dict(os.environ, OUT="out"))
    rows = [line.split("\t") for line in out.stdout.splitlines() if line.count("\t") == 2]
    return out.stdout, [(name, int(t.strip("~ s")), cmd) for name, t, cmd in rows]


def test_every_named_test_file_exists():
    names = set(re.findall(r"test/(?:\w+/)*test_\w+\.py", SCRIPT.read_text()))
    assert len(names) >= 5
    missing = [n for n in sorted(names) if not (SCRIPT.parents[1] / n).is_file()]
    assert not missing, missing


def test_every_tool_command_line_of_a_gpu_run_parses(tmp_path):
    _, rows = _plan(tmp_path)  # from another folder: the script finds the repository itself
    commands = [(m.group(1), shlex.split(m.group(2))) for _, _, cmd in rows
                for m in [re.search(r" -m (foundation_stereo_ros\.tools\.\w+)(.*)$", cmd)] if m]
    assert {m for m, _ in commands} >= {"foundation_stereo_ros.tools.benchmark",
                                        "foundation_stereo_ros.tools.memory_fit"}
    for module, argv in commands:
        parser = importlib.import_module(module).build_parser()
        args = parser.parse_args(argv)  # exits (fails the test) on an option the tool does not have
        assert args.json and args.json.startswith("out/"), (module, argv)
        assert "--device" not in argv  # a GPU run uses the tools' default device, CUDA


def test_a_gpu_run_fits_the_budget_and_says_how_long_it_takes(tmp_path):
    text, rows = _plan(tmp_path)
    assert {name for name, _, _ in rows} >= {"pytest_cuda", "bench_vitl_480x640", "pytest_onnx_gpu", "memory",
                                             "bench_sizes", "node_rate"}
    total = sum(t for _, t, _ in rows)
    assert 4 * 60 <= total <= BUDGET_S, total
    assert "expected GPU time of these checks: about" in text
    assert re.search(r'GPU_CHECK_BUDGET_S:-(\d+)', SCRIPT.read_text()).group(1) == "450"


def test_every_test_selection_matches_tests():
    """``pytest FILE -k NAME`` in the script must select tests: a renamed test would else be
    skipped silently on the one GPU run."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    selections = re.findall(r"(test/(?:\w+/)*test_\w+\.py)[^\n]*?-k (\w+)", text)
    assert selections
    for path, name in selections:
        source = (SCRIPT.parents[1] / path).read_text()
        assert re.search(rf"def test_\w*{name}\w*\(", source), (path, name)


def test_prepare_stages_the_parity_fixtures_and_the_images(tmp_path):
    from conftest import OPENCV_DATA, parity_dir

    if not (OPENCV_DATA / "aloeL.jpg").is_file():
        pytest.skip(f"no opencv-doc sample data in {OPENCV_DATA}")
    inputs = tmp_path / "inputs"
    subprocess.run(["bash", str(SCRIPT), "--prepare"], check=True, cwd=tmp_path, capture_output=True,
                   env=dict(os.environ, GPU_CHECK_INPUTS=str(inputs), FOUNDATION_STEREO_PARITY_DIR=str(parity_dir()),
                            OPENCV_SAMPLE_DATA=str(OPENCV_DATA)))
    assert (inputs / "parity" / "manifest_vits.tsv").is_file()
    assert (inputs / "parity" / "deterministic_weights.py").is_file()
    assert sorted(p.name for p in (inputs / "opencv").iterdir()) == ["aloeGT.png", "aloeL.jpg", "aloeR.jpg"]


@pytest.mark.slow
def test_dry_run_runs_every_check_on_the_cpu_and_reports_each(tmp_path):
    out = tmp_path / "results"
    run = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, cwd=tmp_path,
                         env=dict(os.environ, OUT=str(out)), timeout=600)
    summary = (out / "summary.txt").read_text()
    assert run.returncode == 0, summary
    assert "a GPU run takes about 6-8 min" in summary
    table = summary[summary.index("summary (dry run"):]
    results = dict(re.findall(r"^  (\w+)\s+(passed|failed|skipped)\s", table, re.M))
    assert set(results) >= {"pytest_cuda", "bench_vitl_480x640", "pytest_onnx_gpu", "memory", "bench_sizes",
                            "node_rate"}
    assert results["pytest_cuda"] == results["bench_vitl_480x640"] == results["memory"] == "passed"
    assert re.search(r"ran \d+, passed \d+, failed 0, skipped \d+", table)
    assert "tests collected" in table  # the CUDA test files import and collect
    for name in ("bench_vitl_480x640", "memory", "bench_sizes"):
        assert (out / f"{name}.json").is_file(), name
