"""Dataset layouts and ground-truth encodings (synthetic files in each layout, and real Aloe data)."""
import shutil

import cv2
import numpy as np
import pytest
import yaml

from _training_helpers import photometric_error, synthetic_pair, write_folder_dataset
from foundation_stereo_ros.fileio import write_pfm, write_rgb
from foundation_stereo_ros.training import DataOptions, detect_layout, open_dataset, read_name_list
from foundation_stereo_ros.training.data import decode_fsd_png, decode_kitti_png, encode_fsd_png
from foundation_stereo_ros.training.layouts import parse_source


@pytest.fixture(scope="module")
def pair():
    return synthetic_pair(np.random.default_rng(3), 32, 48, 2, 6)


def check(sample, pair, valid=None):
    left, right, disp = pair
    np.testing.assert_array_equal(sample.left, left)
    np.testing.assert_array_equal(sample.right, right)
    valid = np.ones(disp.shape, bool) if valid is None else valid
    np.testing.assert_array_equal(sample.valid, valid)
    np.testing.assert_allclose(sample.disparity[valid], disp[valid], atol=1e-3)
    assert (sample.disparity[~valid] == 0).all()


def test_folder_layout_pfm_npy_png(tmp_path, pair):
    root = write_folder_dataset(tmp_path / "mine", [pair])
    assert detect_layout(root) == "folder"
    ds = open_dataset(str(root))
    assert len(ds) == 1 and ds.names == [str(root / "left" / "0000.png")]
    check(ds[0], pair)
    # The same ground truth as .npy and as a 16-bit PNG (KITTI scale 256), with unknown pixels.
    left, right, disp = pair
    holes = disp.copy()
    holes[:4] = 0
    (root / "disparity" / "0000.pfm").unlink()
    np.save(root / "disparity" / "0000.npy", holes)
    check(open_dataset(f"folder:{root}")[0], (left, right, disp), valid=holes > 0)
    (root / "disparity" / "0000.npy").unlink()
    cv2.imwrite(str(root / "disparity" / "0000.png"), np.round(holes * 256).astype(np.uint16))
    check(open_dataset(str(root))[0], (left, right, disp), valid=holes > 0)
    # An explicit scale for other PNG conventions (here: px * 100).
    cv2.imwrite(str(root / "disparity" / "0000.png"), np.round(holes * 100).astype(np.uint16))
    check(open_dataset(str(root), DataOptions(disparity_scale=100))[0], (left, right, disp), valid=holes > 0)


def test_folder_layout_depth_with_calibration(tmp_path, pair):
    left, right, disp = pair
    root = tmp_path / "depth_data"
    write_folder_dataset(root, [pair])
    shutil.rmtree(root / "disparity")
    (root / "depth").mkdir()
    f, b, dcx = 500.0, 0.12, 0.5  # depths up to 40 m: within 16-bit millimetres
    depth = f * b / (disp - dcx)  # raw disparity = f * b / Z + delta_cx
    depth_mm = np.round(depth * 1000).astype(np.uint16)
    depth_mm[0, :5] = 0
    cv2.imwrite(str(root / "depth" / "0000.png"), depth_mm)
    with pytest.raises(ValueError, match="calib.yaml"):
        open_dataset(str(root))
    (root / "calib.yaml").write_text(yaml.safe_dump({"focal_px": f, "baseline_m": b, "delta_cx": dcx}))
    s = open_dataset(str(root))[0]
    valid = depth_mm > 0
    expected = np.zeros(disp.shape)
    expected[valid] = f * b / (depth_mm[valid] / 1000.0) + dcx
    np.testing.assert_array_equal(s.valid, valid)
    np.testing.assert_allclose(s.disparity[valid], expected[valid], rtol=1e-5)
    np.testing.assert_allclose(s.disparity[valid], disp[valid], atol=0.02)  # mm rounding only


def test_kitti_layout(tmp_path, pair):
    left, right, disp = pair
    base = tmp_path / "kitti2015" / "training"
    for d in ("image_2", "image_3", "disp_occ_0", "disp_noc_0"):
        (base / d).mkdir(parents=True)
    write_rgb(base / "image_2" / "000000_10.png", left)
    write_rgb(base / "image_3" / "000000_10.png", right)
    write_rgb(base / "image_2" / "000000_11.png", left)  # no ground truth for _11 frames
    write_rgb(base / "image_3" / "000000_11.png", right)
    raw = np.round(disp * 256).astype(np.uint16)
    raw[5:9, 10:20] = 0  # unknown
    cv2.imwrite(str(base / "disp_occ_0" / "000000_10.png"), raw)
    noc = raw.copy()
    noc[:, :4] = 0
    cv2.imwrite(str(base / "disp_noc_0" / "000000_10.png"), noc)
    root = tmp_path / "kitti2015"
    assert detect_layout(root) == "kitti"
    ds = open_dataset(str(root))
    assert len(ds) == 1
    check(ds[0], pair, valid=raw > 0)
    check(open_dataset(str(root), DataOptions(kitti_gt="noc"))[0], pair, valid=noc > 0)
    assert decode_kitti_png(base / "disp_occ_0" / "000000_10.png")[0, 0] == raw[0, 0] / 256.0
    with pytest.raises(ValueError, match="16-bit"):
        decode_kitti_png(base / "image_2" / "000000_10.png")


def test_middlebury_layout_with_inf_and_nocc_mask(tmp_path, pair):
    left, right, disp = pair
    scene = tmp_path / "mb" / "Adirondack"
    scene.mkdir(parents=True)
    write_rgb(scene / "im0.png", left)
    write_rgb(scene / "im1.png", right)
    gt = disp.copy()
    gt[0:3, 0:7] = np.inf  # Middlebury marks unknown disparities with inf
    write_pfm(scene / "disp0GT.pfm", gt)
    mask = np.full(disp.shape, 255, np.uint8)
    mask[10:12] = 128  # occluded
    cv2.imwrite(str(scene / "mask0nocc.png"), mask)
    assert detect_layout(tmp_path / "mb") == "middlebury"
    check(open_dataset(str(tmp_path / "mb"))[0], pair, valid=np.isfinite(gt))
    check(open_dataset(str(tmp_path / "mb"), DataOptions(middlebury_nocc=True))[0], pair,
          valid=np.isfinite(gt) & (mask == 255))


def test_sceneflow_layout(tmp_path, pair):
    left, right, disp = pair
    root = tmp_path / "FlyingThings3D"
    for pas in ("frames_cleanpass", "frames_finalpass"):
        for side, img in (("left", left), ("right", right)):
            d = root / pas / "TRAIN" / "A" / "0000" / side
            d.mkdir(parents=True)
            write_rgb(d / "0006.png", img if pas == "frames_cleanpass" else 255 - img)
    gtd = root / "disparity" / "TRAIN" / "A" / "0000" / "left"
    gtd.mkdir(parents=True)
    write_pfm(gtd / "0006.pfm", disp)
    assert detect_layout(tmp_path) == "sceneflow"
    ds = open_dataset(str(tmp_path))
    assert len(ds) == 1
    check(ds[0], pair)
    both = open_dataset(f"sceneflow:{tmp_path}", DataOptions(sceneflow_passes=("clean", "final")))
    assert len(both) == 2
    np.testing.assert_array_equal(both[1].left, 255 - left)


def test_fsd_layout_and_encoding(tmp_path, pair):
    left, right, disp = pair
    # The published decoding: (R * 255 * 255 + G * 255 + B) / 1000, an independent pixel check.
    px = np.zeros((1, 1, 3), np.uint8)
    px[0, 0] = (3, 2, 1)  # OpenCV's B, G, R -> R=1, G=2, B=3
    cv2.imwrite(str(tmp_path / "px.png"), px)
    assert decode_fsd_png(tmp_path / "px.png")[0, 0] == pytest.approx((1 * 255 * 255 + 2 * 255 + 3) / 1000)
    data = tmp_path / "fsd" / "manipulation_v5_realistic_kitchen_2500_1" / "dataset" / "data"
    for d in ("left/rgb", "right/rgb", "left/disparity"):
        (data / d).mkdir(parents=True)
    write_rgb(data / "left" / "rgb" / "0000.png", left)
    write_rgb(data / "right" / "rgb" / "0000.png", right)
    gt = disp.copy()
    gt[:2] = 0
    cv2.imwrite(str(data / "left" / "disparity" / "0000.png"), encode_fsd_png(gt))
    assert detect_layout(tmp_path / "fsd") == "fsd"
    check(open_dataset(str(tmp_path / "fsd"))[0], pair, valid=gt > 0)


def test_layout_errors_and_name_lists(tmp_path, pair):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="cannot tell the dataset layout"):
        open_dataset(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="does not exist"):
        open_dataset(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no samples"):
        open_dataset(f"kitti:{tmp_path / 'empty'}")
    assert parse_source("kitti:/a/b") == ("kitti", tmp_path.__class__("/a/b"))
    assert parse_source("/data/x:y")[0] is None
    root = write_folder_dataset(tmp_path / "five", [pair] * 5)
    ds = open_dataset(str(root))
    train, val = ds.split(0.25)
    assert len(train) == 4 and len(val) == 1 and not set(train.names) & set(val.names)
    lst = tmp_path / "rejected.txt"
    lst.write_text(f"# comment\n{ds.names[1]}\n\n{ds.names[3]}\n")
    assert read_name_list(lst) == [ds.names[1], ds.names[3]]
    assert ds.without(read_name_list(lst)).names == [ds.names[i] for i in (0, 2, 4)]
    with pytest.raises(ValueError, match="unique"):
        ds + ds


def test_real_middlebury_aloe_in_folder_layout(tmp_path, opencv_data):
    """The Aloe pair of opencv-doc: its 8-bit GT PNG is disparity in px at this size (0 = unknown)."""
    root = tmp_path / "aloe"
    for sub, name in (("left", "aloeL.jpg"), ("right", "aloeR.jpg"), ("disparity", "aloeGT.png")):
        (root / sub).mkdir(parents=True)
        shutil.copy(opencv_data / name, root / sub / ("aloe" + (".png" if sub == "disparity" else ".jpg")))
    s = open_dataset(str(root))[0]
    raw = cv2.imread(str(opencv_data / "aloeGT.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(s.valid, raw > 0)
    np.testing.assert_array_equal(s.disparity, raw.astype(np.float32))
    # The ground truth explains the pair; the same map at another scale does not.
    good = photometric_error(s.left, s.right, s.disparity, s.valid)
    assert good < 0.4 * photometric_error(s.left, s.right, s.disparity * 0.8, s.valid)
