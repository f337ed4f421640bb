"""Dataset layouts: where the pairs and their ground truth lie in the common datasets and in your
own folders, and :func:`open_dataset`, which turns ``[LAYOUT:]PATH`` into a
:class:`~.data.StereoDataset` of :class:`~.data.SampleSpec`.

Layouts (``detect_layout`` recognises them; ``layout:PATH`` forces one):

``sceneflow``  Freiburg Scene Flow (FlyingThings3D, Monkaa, Driving): ``frames_cleanpass/`` (or
    ``frames_finalpass/``, optionally ``_webp``) and ``disparity/`` side by side, e.g.
    ``frames_cleanpass/TRAIN/A/0000/left/0006.png``, ``.../right/0006.png`` and
    ``disparity/TRAIN/A/0000/left/0006.pfm`` (PFM, float32, rows stored bottom-up). PATH may
    be one subset or a folder holding several.
``middlebury``  Middlebury 2014/2021 and Eval3: one folder per scene with ``im0.png``,
    ``im1.png`` and ``disp0.pfm`` (or ``disp0GT.pfm``; inf = unknown). Eval3's
    ``mask0nocc.png`` is used when ``middlebury_nocc`` is set (255 = non-occluded).
``kitti``  KITTI 2015 (``image_2/``, ``image_3/``, ``disp_occ_0/`` or ``disp_noc_0/``) and 2012
    (``colored_0/``, ``colored_1/``, ``disp_occ/`` or ``disp_noc/``) under ``training/``;
    16-bit PNG, disparity = value / 256, 0 = unknown. Only frames with ground truth (``*_10``)
    are listed.
``fsd``  The FoundationStereo dataset: ``<scene>/dataset/data/left/rgb/NNNN.jpg``,
    ``right/rgb/NNNN.jpg`` and ``left/disparity/NNNN.png`` (8-bit RGB PNG, disparity =
    (R * 255^2 + G * 255 + B) / 1000, the published decoding). PATH may be a ``data`` folder or
    any folder above the scene folders.
``folder``  Your own data: ``left/``, ``right/`` and ``disparity/`` with matching file stems.
    Disparity as PFM, ``.npy`` or PNG (16-bit: value / 256 as KITTI, 8-bit: value in px; set
    ``disparity_scale`` otherwise). Instead of ``disparity/``, a ``depth/`` folder (metres in
    PFM/.npy, millimetres in 16-bit PNG; or ``depth_scale``) with a ``calib.yaml`` holding
    ``focal_px`` and ``baseline_m`` (and optionally ``delta_cx``, cx_left - cx_right) is
    converted with d = focal_px * baseline_m / Z + delta_cx.
``bag``  A rosbag2 recording, see :mod:`.bag`: extracted once into a ``folder`` layout; its
    samples are named ``<bag folder>@<left image stamp in ns>``.

Sample names are otherwise the path of the left image; curation writes them to its kept and
rejected lists and ``StereoDataset.without`` takes them back.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import yaml

from .bag import ExtractionOptions, extract_bag
from .data import PathLike, SampleSpec, StereoDataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
GT_EXTENSIONS = (".pfm", ".npy", ".png", ".tif", ".tiff")
LAYOUTS = ("sceneflow", "middlebury", "kitti", "fsd", "folder", "bag")
# Folder-walk depth when looking for Scene Flow subsets or FSD scenes: deep enough for
# <root>/<subset>/<scene>/dataset/data, shallow enough not to walk a million files.
_SEARCH_DEPTH = 4


def _images_in(folder: Path) -> List[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _by_stem(folder: Path, extensions: Sequence[str]) -> Dict[str, Path]:
    out: Dict[str, Path] = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in extensions and p.is_file():
                out.setdefault(p.stem, p)
    return out


def _gt_format(path: Path) -> str:
    ext = path.suffix.lower()
    return {".pfm": "pfm", ".npy": "npy"}.get(ext, "png")


def _walk_dirs(root: Path, depth: int, skip: Iterable[str] = ()) -> Iterable[Path]:
    """Folders under root (root included) down to ``depth`` levels, not entering ``skip`` names."""
    skip = set(skip)
    frontier = [root]
    for _ in range(depth + 1):
        nxt = []
        for d in frontier:
            yield d
            try:
                children = sorted(c for c in d.iterdir() if c.is_dir() and c.name not in skip)
            except OSError:
                children = []
            nxt.extend(children)
        frontier = nxt


def scan_sceneflow(root: Path, passes: Sequence[str] = ("clean",)) -> List[SampleSpec]:
    """Scene Flow subsets under ``root`` (see the module docstring); ``passes``: 'clean', 'final'."""
    for p in passes:
        if p not in ("clean", "final"):
            raise ValueError(f"Scene Flow pass must be 'clean' or 'final', got {p!r}")
    specs: List[SampleSpec] = []
    subsets = [d for d in _walk_dirs(root, 2, skip=("disparity",)) if (d / "disparity").is_dir()]
    for subset in subsets:
        for p in passes:
            for frames in sorted(subset.glob(f"frames_{p}pass*")):
                for left_dir in sorted(frames.rglob("left")):
                    rel = left_dir.relative_to(frames)
                    right_dir = left_dir.parent / "right"
                    gt_dir = subset / "disparity" / rel
                    for left in _images_in(left_dir):
                        right = next((c for c in (right_dir / left.name,) if c.is_file()), None)
                        gt = gt_dir / (left.stem + ".pfm")
                        if right is None or not gt.is_file():
                            continue
                        specs.append(SampleSpec(str(left), left, right, gt, "pfm"))
    return specs


def scan_middlebury(root: Path, nocc: bool = False) -> List[SampleSpec]:
    """Scene folders with im0/im1/disp0[GT].pfm at ``root`` or one level below."""
    specs: List[SampleSpec] = []
    scenes = [root] + sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    for scene in scenes:
        left, right = scene / "im0.png", scene / "im1.png"
        gt = next((g for g in (scene / "disp0GT.pfm", scene / "disp0.pfm") if g.is_file()), None)
        if not (left.is_file() and right.is_file() and gt is not None):
            continue
        mask = scene / "mask0nocc.png"
        specs.append(SampleSpec(str(left), left, right, gt, "pfm",
                                mask=mask if nocc and mask.is_file() else None))
    return specs


_KITTI_DIRS = (("image_2", "image_3", "disp_occ_0", "disp_noc_0"),  # 2015
               ("colored_0", "colored_1", "disp_occ", "disp_noc"))  # 2012


def scan_kitti(root: Path, gt: str = "occ") -> List[SampleSpec]:
    """KITTI 2012/2015 training folders at ``root``, ``root/training`` or one level below."""
    if gt not in ("occ", "noc"):
        raise ValueError(f"KITTI ground truth must be 'occ' or 'noc', got {gt!r}")
    candidates = [root, root / "training"] + ([d / "training" for d in sorted(root.iterdir()) if d.is_dir()]
                                              if root.is_dir() else [])
    specs: List[SampleSpec] = []
    for base in candidates:
        for left_name, right_name, occ, noc in _KITTI_DIRS:
            gt_dir = base / (occ if gt == "occ" else noc)
            if not (base / left_name).is_dir() or not gt_dir.is_dir():
                continue
            for g in sorted(gt_dir.glob("*.png")):
                left, right = base / left_name / g.name, base / right_name / g.name
                if left.is_file() and right.is_file():
                    specs.append(SampleSpec(str(left), left, right, g, "kitti_png"))
    return specs


def scan_fsd(root: Path) -> List[SampleSpec]:
    """FoundationStereo-dataset ``data`` folders at or below ``root``."""
    specs: List[SampleSpec] = []
    for d in _walk_dirs(root, _SEARCH_DEPTH, skip=("rgb", "disparity")):
        gt_dir, left_dir, right_dir = d / "left" / "disparity", d / "left" / "rgb", d / "right" / "rgb"
        if not (gt_dir.is_dir() and left_dir.is_dir() and right_dir.is_dir()):
            continue
        lefts, rights = _by_stem(left_dir, IMAGE_EXTENSIONS), _by_stem(right_dir, IMAGE_EXTENSIONS)
        for stem, g in _by_stem(gt_dir, (".png",)).items():
            if stem in lefts and stem in rights:
                specs.append(SampleSpec(str(lefts[stem]), lefts[stem], rights[stem], g, "fsd_png"))
    return specs


def read_folder_calibration(path: Path) -> Tuple[float, float]:
    """(focal_px * baseline_m, delta_cx) from a ``calib.yaml`` of the ``folder`` layout."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read the calibration: {e}") from None
    if not isinstance(data, Mapping) or "focal_px" not in data or "baseline_m" not in data:
        raise ValueError(f"{path}: needs 'focal_px' (rectified focal length, px) and 'baseline_m' (m) to turn "
                         f"depth into disparity")
    try:
        f, b, dcx = float(data["focal_px"]), float(data["baseline_m"]), float(data.get("delta_cx", 0.0))
    except (TypeError, ValueError):
        raise ValueError(f"{path}: focal_px, baseline_m and delta_cx must be numbers") from None
    if not (f > 0 and b > 0 and np.isfinite(f * b) and np.isfinite(dcx)):
        raise ValueError(f"{path}: focal_px and baseline_m must be positive, got {f} and {b}")
    return f * b, dcx


def scan_folder(root: Path, disparity_scale: Optional[float] = None,
                depth_scale: Optional[float] = None) -> List[SampleSpec]:
    """``left/``, ``right/`` and ``disparity/`` (or ``depth/`` + ``calib.yaml``) with matching stems."""
    lefts, rights = _by_stem(root / "left", IMAGE_EXTENSIONS), _by_stem(root / "right", IMAGE_EXTENSIONS)
    disp_dir = next((root / n for n in ("disparity", "disp") if (root / n).is_dir()), None)
    if disp_dir is not None:
        gts, kind, scale, fb, dcx = _by_stem(disp_dir, GT_EXTENSIONS), "disparity", disparity_scale, None, 0.0
    elif (root / "depth").is_dir():
        calib = root / "calib.yaml"
        if not calib.is_file():
            raise ValueError(f"{root}: a depth/ folder needs {calib} with focal_px and baseline_m")
        fb, dcx = read_folder_calibration(calib)
        gts, kind, scale = _by_stem(root / "depth", GT_EXTENSIONS), "depth", depth_scale
    else:
        return []
    return [SampleSpec(str(lefts[s]), lefts[s], rights[s], g, _gt_format(g), kind, scale, fb, dcx)
            for s, g in gts.items() if s in lefts and s in rights]


def detect_layout(root: Path) -> str:
    """The layout of a dataset folder, or ValueError describing what was expected."""
    if (root / "metadata.yaml").is_file() or root.suffix in (".mcap", ".db3"):
        return "bag"
    if not root.is_dir():
        raise ValueError(f"{root}: no such dataset folder")
    if (root / "left").is_dir() and any((root / n).is_dir() for n in ("disparity", "disp", "depth")):
        return "folder"
    if scan_middlebury(root):
        return "middlebury"
    if scan_kitti(root):
        return "kitti"
    if any((d / "disparity").is_dir() and any(d.glob("frames_*pass*")) for d in _walk_dirs(root, 2)):
        return "sceneflow"
    if any((d / "left" / "disparity").is_dir() for d in _walk_dirs(root, _SEARCH_DEPTH, skip=("rgb", "disparity"))):
        return "fsd"
    raise ValueError(
        f"{root}: cannot tell the dataset layout. Expected one of: left/ right/ disparity/ (folder); "
        f"<scene>/im0.png im1.png disp0.pfm (middlebury); training/image_2 image_3 disp_occ_0 (kitti); "
        f"frames_cleanpass/ and disparity/ (sceneflow); <scene>/dataset/data/left/rgb, left/disparity (fsd); "
        f"or a rosbag2 folder (bag). Force one with LAYOUT:PATH.")


# --------------------------------------------------------------------------------- opening a source

@dataclass(frozen=True)
class DataOptions:
    """Per-layout reading options (the CLI's dataset flags)."""

    sceneflow_passes: Tuple[str, ...] = ("clean",)
    kitti_gt: str = "occ"
    middlebury_nocc: bool = False
    disparity_scale: Optional[float] = None
    depth_scale: Optional[float] = None
    bag: Mapping[str, object] = field(default_factory=dict)  # fields of bag.ExtractionOptions


def parse_source(source: str) -> Tuple[Optional[str], Path]:
    """``LAYOUT:PATH`` or ``PATH`` -> (layout or None, path)."""
    head, sep, tail = source.partition(":")
    if sep and head in LAYOUTS:
        return head, Path(tail).expanduser()
    return None, Path(source).expanduser()


def open_dataset(source: str, options: DataOptions = DataOptions(),
                 cache_dir: Optional[PathLike] = None, log: Callable[[str], None] = lambda s: None) -> StereoDataset:
    """A dataset from ``[LAYOUT:]PATH``; bags are extracted into ``cache_dir`` first."""
    layout, root = parse_source(source)
    if not root.exists():
        raise ValueError(f"{source}: {root} does not exist")
    layout = layout or detect_layout(root)
    if layout == "bag":
        if cache_dir is None:
            raise ValueError(f"{source}: a bag needs a cache folder to extract its pairs into")
        folder = extract_bag(root, Path(cache_dir), ExtractionOptions(**dict(options.bag)), log=log)
        # Named by bag and stamp, not by cache path, so that curation lists written by one tool
        # (with its own cache folder) apply in another.
        bag_dir = (root.parent if root.is_file() else root).resolve()
        specs = [replace(sp, name=f"{bag_dir}@{sp.left.stem.split('_', 1)[-1]}") for sp in scan_folder(folder)]
    elif layout == "sceneflow":
        specs = scan_sceneflow(root, options.sceneflow_passes)
    elif layout == "middlebury":
        specs = scan_middlebury(root, options.middlebury_nocc)
    elif layout == "kitti":
        specs = scan_kitti(root, options.kitti_gt)
    elif layout == "fsd":
        specs = scan_fsd(root)
    elif layout == "folder":
        specs = scan_folder(root, options.disparity_scale, options.depth_scale)
    else:
        raise ValueError(f"unknown layout {layout!r}; one of {', '.join(LAYOUTS)}")
    if not specs:
        raise ValueError(f"{source}: no samples with ground truth found for the {layout} layout "
                         f"(see `foundation-stereo-finetune --help` for the expected files)")
    log(f"{source}: {len(specs)} samples ({layout})")
    return StereoDataset(specs, f"{layout}:{root}")
