"""Self-curation logic with a real (non-network) stereo matcher: OpenCV's SGBM.

The network-driven pass (foundation-stereo-curate with a fine-tuned checkpoint) is tested in
test/training/test_run.py; here the matcher is cheap and accurate, so the paper's default rule
(bad-2 > 60 %) can be checked on clean and corrupted pairs.
"""
import csv

import cv2
import numpy as np
import pytest

from _training_helpers import synthetic_pairs, write_folder_dataset
from foundation_stereo_ros.training import CurationCriteria, curate, open_dataset, read_name_list, write_curation


def sgbm(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    m = cv2.StereoSGBM_create(minDisparity=0, numDisparities=16, blockSize=5, P1=8 * 3 * 25, P2=32 * 3 * 25,
                              uniquenessRatio=15)
    d = m.compute(cv2.cvtColor(left, cv2.COLOR_RGB2GRAY), cv2.cvtColor(right, cv2.COLOR_RGB2GRAY))
    d = d.astype(np.float32) / 16.0
    d[d < 0] = np.nan  # no match: a hole, which counts as a bad pixel
    return d


@pytest.fixture(scope="module")
def dataset_with_a_swapped_pair(tmp_path_factory):
    pairs = synthetic_pairs(5, 96, 160, seed=1)
    left, right, disp = pairs[2]
    pairs[2] = (right, left, disp)  # left and right swapped, ground truth unchanged
    root = write_folder_dataset(tmp_path_factory.mktemp("curate") / "data", pairs)
    return open_dataset(str(root))


def test_swapped_pair_is_rejected_and_clean_pairs_kept(dataset_with_a_swapped_pair, tmp_path):
    ds = dataset_with_a_swapped_pair
    seen = []
    result = curate(sgbm, ds, CurationCriteria(), worst=3, progress=lambda i, n, s: seen.append((i, n)))
    assert seen[-1] == (5, 5)
    assert result.rejected == [ds.names[2]]
    assert result.kept == [n for i, n in enumerate(ds.names) if i != 2]
    worst = result.worst[0][0]
    assert worst.name == ds.names[2] and worst.bad_percent > 60 and "bad-2" in worst.reason
    assert all(s.bad_percent < 30 for s in result.scores if s.kept)

    paths = write_curation(result, tmp_path / "report", title="synthetic")
    assert read_name_list(paths["rejected"]) == [ds.names[2]]
    assert read_name_list(paths["kept"]) == result.kept
    with open(paths["scores"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows][0] == ds.names[2] and len(rows) == 5
    assert float(rows[0]["bad_2"]) == pytest.approx(worst.bad_percent, rel=1e-4)
    report = paths["report"].read_text()
    assert "bad-2 > 60 %" in report and ds.names[2] in report and "rejected: 1" in report
    pics = sorted((tmp_path / "report" / "worst").glob("*.png"))
    assert len(pics) == 3 and pics[0].name.startswith("01_")
    img = cv2.imread(str(pics[0]))
    assert img.shape == (3 * 96, 2 * 160, 3)  # 3 rows x 2 tiles at the sample's size
    assert f"worst/{pics[0].name}" in report


def test_epe_criterion_missing_ground_truth_and_unreadable_samples(tmp_path):
    pairs = synthetic_pairs(3, 64, 96, seed=4)
    left, right, disp = pairs[1]
    pairs[1] = (left, right, disp + 6.0)  # a wrong disparity offset (e.g. a bad delta_cx)
    pairs[2] = (pairs[2][0], pairs[2][1], np.zeros_like(disp))  # no ground truth at all
    root = write_folder_dataset(tmp_path / "d", pairs + [pairs[0]])
    (root / "disparity" / "0003.pfm").write_bytes(b"Pf\n96 64\n-1.0\n" + b"\0" * 100)  # truncated
    ds = open_dataset(str(root))

    def perfect(left_img, right_img):  # an oracle that knows the true scenes
        for (l0, r0, d0), name in zip(synthetic_pairs(3, 64, 96, seed=4), ds.names):
            if np.array_equal(l0, left_img):
                return d0
        raise AssertionError("unknown pair")

    result = curate(perfect, ds, CurationCriteria(max_bad_percent=None, max_epe=3.0))
    by_name = {s.name: s for s in result.scores}
    assert result.kept == [ds.names[0]]
    assert "EPE 6 px > 3 px" in by_name[ds.names[1]].reason
    assert by_name[ds.names[2]].reason == "no valid ground truth"
    assert by_name[ds.names[3]].reason.startswith("unreadable")
    with pytest.raises(ValueError, match="limit"):
        CurationCriteria(max_bad_percent=None, max_epe=None)
    with pytest.raises(ValueError, match="max_bad_percent"):
        CurationCriteria(max_bad_percent=150)


def test_curate_cli_scale_option_resamples_ground_truth(dataset_with_a_swapped_pair):
    from foundation_stereo_ros.tools.curate import _Rescaled

    ds = dataset_with_a_swapped_pair
    half = _Rescaled(ds, 0.5)
    s, full = half[0], ds[0]
    assert s.left.shape == (48, 80, 3) and len(half) == len(ds) and half.specs is ds.specs
    # every ground-truth value halves with the width (integers 2..10 px -> 1..5 px)
    assert set(np.unique(s.disparity[s.valid])) <= set(np.unique(full.disparity[full.valid]) / 2)


def test_shares_merged_give_the_one_process_result(dataset_with_a_swapped_pair):
    """What --jobs and torchrun ranks do: each scores every N-th sample, the parts are merged."""
    from foundation_stereo_ros.training.curation import merge_results

    ds = dataset_with_a_swapped_pair
    whole = curate(sgbm, ds, worst=3)
    parts = [curate(sgbm, ds, worst=3, indices=range(k, len(ds), 2)) for k in range(2)]
    merged = merge_results(parts[::-1], ds.names, worst=3)
    assert merged.scores == whole.scores and merged.kept == whole.kept and merged.rejected == whole.rejected
    assert [s.name for s, _, _ in merged.worst] == [s.name for s, _, _ in whole.worst]
    assert len(whole.worst) == 3
