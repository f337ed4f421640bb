"""Helpers for the evaluation tests: an independent per-pixel metric implementation, Aloe bags,
and reading back what the tools wrote (with rosbags directly, not the package's reader)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
from rosbags.highlevel import AnyReader

from foundation_stereo_ros.evaluation import bag_io as B
from foundation_stereo_ros.pipeline.calibration import rectified_pair
from foundation_stereo_ros.tools import make_bag

FX_FULL, BASELINE = 3740.0, 0.16
ALOE_SIZE = (1282, 1110)


def naive_metrics(pred, gt, pred_depth=None, gt_depth=None, thresholds=(1, 2, 3)):
    """The README definitions, one pixel at a time with plain Python floats."""
    h, w = len(gt), len(gt[0])
    n_gt = n_both = n_pred = 0
    sum_err = 0.0
    bad = {t: 0 for t in thresholds}
    d1 = 0
    for y in range(h):
        for x in range(w):
            p, g = float(pred[y][x]), float(gt[y][x])
            p_ok = math.isfinite(p) and p > 0
            g_ok = math.isfinite(g) and g > 0
            n_pred += p_ok
            if not g_ok:
                continue
            n_gt += 1
            if not p_ok:
                for t in thresholds:
                    bad[t] += 1
                d1 += 1
                continue
            n_both += 1
            e = abs(p - g)
            sum_err += e
            for t in thresholds:
                bad[t] += e > t
            d1 += (e > 3.0 and e > 0.05 * g)
    out = {"completeness": 100.0 * n_pred / (h * w), "gt_coverage": 100.0 * n_both / n_gt, "epe": sum_err / n_both,
           "d1": 100.0 * d1 / n_gt}
    out.update({f"bad_{t}": 100.0 * bad[t] / n_gt for t in thresholds})
    if pred_depth is not None:
        n = 0
        s = 0.0
        good = 0
        for y in range(h):
            for x in range(w):
                zp, zg = float(pred_depth[y][x]), float(gt_depth[y][x])
                if not (math.isfinite(zp) and zp > 0 and math.isfinite(zg) and zg > 0):
                    continue
                n += 1
                s += abs(zp - zg) / zg
                good += max(zp / zg, zg / zp) < 1.25
        out["abs_rel"] = s / n
        out["delta1"] = 100.0 * good / n
    return out



def aloe_gt(opencv_data: Path, scale: float) -> np.ndarray:
    """aloeGT.png resized like make-bag does it (nearest neighbour, values x scale), 0 = unknown."""
    gt = cv2.imread(str(opencv_data / "aloeGT.png"), cv2.IMREAD_UNCHANGED).astype(np.float32)
    w, h = ALOE_SIZE
    return cv2.resize(gt, (int(round(w * scale)), int(round(h * scale))), interpolation=cv2.INTER_NEAREST) * scale


def make_aloe_bag(path: Path, opencv_data: Path, scale: float, repeat: int = 1, gt: bool = True,
                  storage: str = "sqlite3", rate: float = 5.0, extra: Sequence[str] = ()) -> Path:
    """A bag of the Aloe pair through the make-bag CLI (simple YAML calibration, f = 3740 px full size);
    ``extra``: more make-bag arguments (``--compressed png`` ...)."""
    calib = path.parent / (path.name + "_calib.yaml")
    w, h = ALOE_SIZE
    calib.write_text(f"fx: {FX_FULL}\ncx: {(w - 1) / 2}\ncy: {(h - 1) / 2}\nbaseline: {BASELINE}\n")
    args = [str(path), "--left", str(opencv_data / "aloeL.jpg"), "--right", str(opencv_data / "aloeR.jpg"),
            "--calib", str(calib), "--scale", str(scale), "--repeat", str(repeat), "--rate", str(rate),
            "--start-time", "100", "--storage", storage]
    if gt:
        args += ["--gt-disparity", str(opencv_data / "aloeGT.png")]
    if make_bag.main(args + list(extra)) != 0:
        raise RuntimeError("make-bag failed")
    return path


def read_messages(path: Path) -> Dict[str, List[Tuple[int, object]]]:
    out: Dict[str, List[Tuple[int, object]]] = {}
    with AnyReader([path]) as reader:
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, reader.deserialize(raw, conn.msgtype)))
    return out


def float_image(msg) -> np.ndarray:
    """A 32FC1 Image as (H, W) float32, decoded here from the raw bytes."""
    assert msg.encoding == "32FC1"
    rows = np.asarray(msg.data, np.uint8).reshape(msg.height, msg.step)[:, : msg.width * 4]
    return np.ascontiguousarray(rows).view("<f4").reshape(msg.height, msg.width).copy()


def disparity_values(msg) -> np.ndarray:
    """A DisparityImage as float32 with NaN where stereo_image_proc's convention marks invalid
    (values below min_disparity, or non-finite)."""
    d = float_image(msg.image)
    d[~np.isfinite(d) | (d < msg.min_disparity)] = np.nan
    return d


T0 = 1_000_000_000_000


def write_plan_bag(path: Path, left: np.ndarray, right: np.ndarray, plan, storage: str = "sqlite3",
                   period_ns: int = 100_000_000, namespace: str = "/cam"):
    """A bag following ``plan``: per frame a list of (role, stamp offset ns) logged in that order
    (roles left, left_info, right, right_info), frame i based at T0 + i * period_ns."""
    h, w = left.shape[:2]
    calib = rectified_pair(467.5, (w - 1) / 2, (h - 1) / 2, 0.16, w, h)
    topics = B.StereoTopics.under(namespace)
    names = {"left": topics.left_image, "left_info": topics.left_info, "right": topics.right_image,
             "right_info": topics.right_info}
    with B.StereoBagWriter(path, storage=storage) as wr:
        n = 0
        for i, entries in enumerate(plan):
            base = T0 + i * period_ns
            for role, offset in entries:
                stamp = base + offset
                msg = {"left": lambda: B.image_msg(left, "rgb8", stamp, "l"),
                       "right": lambda: B.image_msg(right, "rgb8", stamp, "r"),
                       "left_info": lambda: B.camera_info_msg(calib.left, stamp, "l"),
                       "right_info": lambda: B.camera_info_msg(calib.right, stamp, "r")}[role]()
                n += 1
                wr.write(names[role], msg, base + 1000 * n)
    return topics


def copy_bag(src: Path, dst: Path, change=lambda topic, index, msg: msg, storage: str = "sqlite3") -> Path:
    """A new bag with ``src``'s messages at their log times; ``change(topic, index on the topic, msg)``
    returns the message to write (the same one, a modified one, or None to leave it out)."""
    counts: Dict[str, int] = {}
    with B.StereoBagWriter(dst, storage=storage) as wr:
        for topic, items in read_messages(src).items():
            for t, msg in items:
                out = change(topic, counts.get(topic, 0), msg)
                counts[topic] = counts.get(topic, 0) + 1
                if out is not None:
                    wr.write(topic, out, t)
    return dst
