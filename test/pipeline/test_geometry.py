"""Calibration, rectification, disparity -> depth -> points, and the StereoProcessor on synthetic scenes."""
from __future__ import annotations

import types

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foundation_stereo_ros.model import CheckpointError
from foundation_stereo_ros.pipeline import (ALL_OUTPUTS, BackendError, CalibrationError, DecodedPair,
                                            FoundationStereoBackend, Outputs, PairMismatchError, ProcessorConfig,
                                            Rectifier, StereoCalibration, StereoProcessor, depth_to_points,
                                            disparity_to_depth, make_camera_model, pack_rgb, project_points,
                                            rectification_maps, unpack_rgb)

from _ros_helpers import textured_scene

W, H, F, B = 200, 64, 100.0, 0.1


def info(width=W, height=H, k=None, d=(0.0,) * 5, r=None, p=None, model="plumb_bob", **extra):
    k = [F, 0, width / 2, 0, F, height / 2, 0, 0, 1] if k is None else k
    r = [1.0, 0, 0, 0, 1, 0, 0, 0, 1] if r is None else r
    p = [F, 0, width / 2, 0, 0, F, height / 2, 0, 0, 0, 1, 0] if p is None else p
    return types.SimpleNamespace(width=width, height=height, k=list(k), d=list(d), r=list(r), p=list(p),
                                 distortion_model=model, binning_x=extra.get("bx", 0), binning_y=0,
                                 roi=extra.get("roi"))


def right_p(tx=-F * B, cx=W / 2, cy=H / 2, f=F, ty=0.0):
    return [f, 0, cx, tx, 0, f, cy, ty, 0, 0, 1, 0]


def calib(left=None, right=None):
    return StereoCalibration.from_camera_info(left or info(), right or info(p=right_p()))


# ---------------------------------------------------------------------------------------------- calibration
def test_baseline_focal_and_principal_point_offset_come_from_p():
    c = calib(info(p=[F, 0, 103.0, 0, 0, F, 32, 0, 0, 0, 1, 0]), info(p=right_p(cx=97.5)))
    assert c.f == F
    assert c.baseline == pytest.approx(B)
    assert c.delta_cx == pytest.approx(103.0 - 97.5)


@pytest.mark.parametrize("left,right,problem", [
    (info(p=[0.0] * 12), info(p=right_p()), "calibration_zero_focal"),
    (info(), info(p=right_p(f=0.0)), "calibration_zero_focal"),
    (info(), info(p=right_p(tx=0.0)), "zero_baseline"),
    # Found by the property test: a principal point of 2.7e36 overflowed the float32 points.
    (info(p=[F, 0, 100, 0, 0, F, 2.7e36, 0, 0, 0, 1, 0]), info(p=right_p(cy=2.7e36)), "calibration_principal_point"),
    (info(), info(p=right_p(cx=-1e9)), "calibration_principal_point"),
    (info(), info(p=right_p(tx=+F * B)), "negative_baseline"),
    (info(), info(p=right_p(ty=-F * B)), "vertical_stereo"),
    (info(), info(p=right_p(cy=H / 2 + 5)), "not_rectified"),
    (info(), info(p=right_p(f=F * 1.1, tx=-F * 1.1 * B)), "not_rectified"),
    (info(p=[F, 0, 100, 0, 0, float("nan"), 32, 0, 0, 0, 1, 0]), info(p=right_p()), "calibration_nonfinite"),
    (info(), info(p=right_p(tx=float("inf"))), "calibration_nonfinite"),
    (info(d=(0.1, float("nan"), 0, 0, 0)), info(p=right_p()), "calibration_nonfinite"),
    (info(width=0), info(width=0, p=right_p()), "calibration_size"),
    (info(), info(width=W + 2, p=right_p()), "calibration_size"),
    (info(k=[F, 0, 1]), info(p=right_p()), "calibration_shape"),
    (info(bx=2), info(p=right_p()), "calibration_binning"),
    (info(roi=types.SimpleNamespace(x_offset=4, y_offset=4, width=50, height=20)), info(p=right_p()),
     "calibration_binning"),
    (None, info(p=right_p()), "calibration_missing"),
])
def test_unusable_calibrations_are_rejected_with_their_problem(left, right, problem):
    with pytest.raises(CalibrationError) as e:
        StereoCalibration.from_camera_info(left, right)
    assert e.value.problem == problem
    assert str(e.value)


def test_unsupported_distortion_model_is_rejected_when_rectifying():
    c = calib(info(d=(0.1, 0, 0, 0, 0), model="thin_prism"), info(p=right_p()))
    with pytest.raises(CalibrationError) as e:
        Rectifier().maps(c)
    assert e.value.problem == "distortion_model"


def test_zero_r_means_identity_and_ros1_field_names_work():
    ros1 = types.SimpleNamespace(width=W, height=H, K=info().k, D=[], R=[0.0] * 9, P=right_p(),
                                 distortion_model="")
    c = StereoCalibration.from_camera_info(info(), ros1)
    assert not c.right.has_rotation() and c.baseline == pytest.approx(B)


def test_image_size_must_match_calibration():
    with pytest.raises(CalibrationError) as e:
        calib().check_image_size(W // 2, H // 2)
    assert e.value.problem == "calibration_mismatch"


@pytest.mark.parametrize("d,r,mode,expected", [
    ((0.0,) * 5, None, "auto", False),
    ((-0.2, 0.05, 0, 0, 0), None, "auto", True),
    ((0.0,) * 5, cv2.Rodrigues(np.array([0.0, 0.02, 0.0]))[0].ravel(), "auto", True),
    ((-0.2, 0.05, 0, 0, 0), None, "never", False),
    ((0.0,) * 5, None, "always", True),
])
def test_rectify_mode_decision(d, r, mode, expected):
    c = calib(info(d=d, r=r), info(p=right_p()))
    assert c.needs_rectification(mode) is expected


def raw_camera(rvec, dist, width=320, height=240, f=260.0):
    K = np.array([[f, 0, width / 2 + 3], [0, f * 1.01, height / 2 - 2], [0, 0, 1]])
    R = cv2.Rodrigues(np.asarray(rvec, float))[0]
    P = np.array([[f * 0.9, 0, width / 2, 0], [0, f * 0.9, height / 2, 0], [0, 0, 1, 0]])
    return K, np.asarray(dist, float), R, P


@pytest.mark.parametrize("float_tables", [True, False])
def test_rectification_maps_follow_the_camera_model(float_tables):
    """Each rectified pixel samples the raw pixel where its ray lands, computed independently with
    cv2.projectPoints (ray = R^T P^-1 [u v 1], then K and D)."""
    K, D, R, P = raw_camera([0.01, -0.03, 0.005], [-0.25, 0.08, 0.001, -0.0005, -0.01])
    left = make_camera_model(320, 240, K.ravel(), D, R.ravel(), P.ravel(), name="left")
    Pr = P.copy()
    Pr[0, 3] = -P[0, 0] * 0.1
    right = make_camera_model(320, 240, K.ravel(), D, R.ravel(), Pr.ravel(), name="right")
    maps = rectification_maps(StereoCalibration(left, right), float_tables)
    assert maps.float_tables == float_tables
    mapx, mapy = maps.as_float()[0]
    vs, us = np.mgrid[10:240:37, 10:320:41]
    pix = np.stack([us.ravel(), vs.ravel(), np.ones(us.size)], axis=0).astype(float)
    rays = (R.T @ np.linalg.inv(P[:, :3]) @ pix).T
    raw, _ = cv2.projectPoints(rays.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), K, D)
    raw = raw.reshape(-1, 2)
    got = np.stack([mapx[vs.ravel(), us.ravel()], mapy[vs.ravel(), us.ravel()]], axis=1)
    assert np.abs(got - raw).max() < 0.05  # the fixed-point form (OpenCV 4) rounds to 1/32 px


@pytest.mark.parametrize("float_tables", [True, False])
def test_fisheye_calibration_is_rectified_with_the_fisheye_model(float_tables):
    K, _, R, P = raw_camera([0, 0, 0], [0, 0, 0, 0])
    D = np.array([0.05, -0.01, 0.002, -0.0003])
    left = make_camera_model(320, 240, K.ravel(), D, R.ravel(), P.ravel(), "equidistant", "left")
    Pr = P.copy()
    Pr[0, 3] = -P[0, 0] * 0.1
    right = make_camera_model(320, 240, K.ravel(), D, R.ravel(), Pr.ravel(), "equidistant", "right")
    maps = rectification_maps(StereoCalibration(left, right), float_tables)
    assert maps.float_tables == float_tables
    mapx, mapy = maps.as_float()[0]
    u, v = 300, 200
    ray = np.linalg.inv(P[:, :3]) @ np.array([u, v, 1.0])
    raw, _ = cv2.fisheye.projectPoints(ray.reshape(1, 1, 3), np.zeros(3), np.zeros(3), K, D)
    assert np.abs(np.array([mapx[v, u], mapy[v, u]]) - raw.ravel()).max() < 0.05


def test_rectification_maps_are_computed_once_per_calibration():
    rect = Rectifier()
    c1 = calib(info(d=(-0.1, 0, 0, 0, 0)), info(p=right_p(), d=(-0.1, 0, 0, 0, 0)))
    c1_again = calib(info(d=(-0.1, 0, 0, 0, 0)), info(p=right_p(), d=(-0.1, 0, 0, 0, 0)))
    c2 = calib(info(d=(-0.2, 0, 0, 0, 0)), info(p=right_p(), d=(-0.1, 0, 0, 0, 0)))
    img = np.zeros((H, W, 3), np.uint8)
    for _ in range(3):
        rect.rectify(img, img, c1)
    rect.rectify(img, img, c1_again)  # equal content, new objects: still cached
    assert rect.maps_computed == 1
    rect.rectify(img, img, c2)
    assert rect.maps_computed == 2


# ---------------------------------------------------------------------------------------------- geometry
def test_depth_from_disparity_and_invalid_pixels():
    d = np.array([[10.0, 20.0, 0.0, -1.0, np.nan, 1.0]], np.float32)
    depth = disparity_to_depth(d, F, B)
    np.testing.assert_allclose(depth[0, :2], [F * B / 10, F * B / 20], rtol=1e-6)
    assert np.isnan(depth[0, 2:5]).all()
    limited = disparity_to_depth(d, F, B, min_depth=0.6, max_depth=5.0)
    assert np.isnan(limited[0, 1]) and limited[0, 0] == pytest.approx(1.0)
    assert np.isnan(limited[0, 5])  # 10 m > max_depth
    with pytest.raises(ValueError):
        disparity_to_depth(d, F, 0.0)


def test_principal_point_offset_convention_matches_projection():
    """A 3D point projected through both P matrices: its raw disparity minus delta_cx gives its depth."""
    c = calib(info(p=[F, 0, 104.0, 0, 0, F, 32, 0, 0, 0, 1, 0]), info(p=right_p(cx=96.0)))
    Pl, Pr = c.left.P, c.right.P
    for X in ([0.3, -0.1, 2.0], [-0.5, 0.2, 7.5]):
        Xh = np.array(X + [1.0])
        xl, xr = Pl @ Xh, Pr @ Xh
        raw = xl[0] / xl[2] - xr[0] / xr[2]
        depth = disparity_to_depth(np.array([[raw - c.delta_cx]], np.float32), c.f, c.baseline)
        assert depth[0, 0] == pytest.approx(X[2], rel=1e-5)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), fx=st.floats(50, 2000), fy=st.floats(50, 2000),
       cx=st.floats(-50, 60), cy=st.floats(-50, 60), seed=st.integers(0, 1000))
def test_points_project_back_onto_their_pixels(h, w, fx, fy, cx, cy, seed):
    depth = np.random.default_rng(seed).uniform(0.1, 50.0, (h, w)).astype(np.float32)
    depth[0, 0] = np.nan
    pts = depth_to_points(depth, fx, fy, cx, cy)
    u, v = project_points(pts, fx, fy, cx, cy)
    vv, uu = np.mgrid[0:h, 0:w]
    ok = np.isfinite(depth)
    np.testing.assert_allclose(u[ok], uu[ok], atol=2e-3)
    np.testing.assert_allclose(v[ok], vv[ok], atol=2e-3)
    np.testing.assert_array_equal(pts[..., 2][ok], depth[ok])
    assert np.isnan(pts[0, 0]).all()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2 ** 32 - 1))
def test_packed_rgb_round_trip(seed):
    rgb = np.random.default_rng(seed).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    packed = pack_rgb(rgb)
    assert packed.dtype == np.uint32
    np.testing.assert_array_equal(packed[0, 0], (int(rgb[0, 0, 0]) << 16) | (int(rgb[0, 0, 1]) << 8) | int(rgb[0, 0, 2]))
    np.testing.assert_array_equal(unpack_rgb(packed), rgb)
    np.testing.assert_array_equal(unpack_rgb(packed.view(np.float32)), rgb)


def test_message_buffer_is_a_numpy_array_over_one_byte_array():
    import array

    from foundation_stereo_ros.pipeline.geometry import message_buffer, message_buffer_owner

    buf = message_buffer((3, 5, 4), np.float32)
    assert buf.shape == (3, 5, 4) and buf.dtype == np.float32 and buf.flags.writeable
    owner = message_buffer_owner(buf)
    assert isinstance(owner, array.array) and owner.typecode == "B" and len(owner) == buf.nbytes
    buf[1, 2, 3] = 7.5
    assert np.frombuffer(owner, np.float32)[(1 * 5 + 2) * 4 + 3] == 7.5  # the same memory
    assert message_buffer_owner(buf[..., :3]) is None  # not C-ordered
    assert message_buffer_owner(buf[1:]) is None  # a part only
    assert message_buffer_owner(np.zeros((3, 5, 4), np.float32)) is None  # numpy's own memory
    assert message_buffer_owner(buf.reshape(-1).view(np.uint8)) is owner  # views of the whole keep it


def test_message_buffers_are_recycled_only_once_nothing_holds_them():
    """A new buffer costs a zeroing pass; one that nothing references any more (no array, view,
    tensor or message) is handed out again, never one that something still holds."""
    import gc
    import weakref

    import torch

    from foundation_stereo_ros.pipeline.geometry import message_buffer, message_buffer_owner

    shape = (7, 11, 4)  # a size no other test uses

    def owner_ref(a):
        return weakref.ref(message_buffer_owner(a))

    held = message_buffer(shape, np.float32)
    held[...] = 1.0
    first = owner_ref(held)
    for keep in (lambda a: a[2:], lambda a: a.reshape(-1).view(np.uint8), torch.from_numpy,
                 message_buffer_owner):  # a view, a tensor, and the array.array a message's data field holds
        holder = keep(held)
        del held
        gc.collect()
        assert first() is not None
        others = [message_buffer(shape, np.float32) for _ in range(3)]
        assert all(message_buffer_owner(o) is not first() for o in others)  # held: never handed out
        del holder
        gc.collect()
        held = message_buffer(shape, np.float32)
        assert message_buffer_owner(held) is first()  # free again: recycled, contents as left
        assert np.all(held == 1.0)
        del others


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 2 ** 32 - 1))
def test_cloud_is_bit_identical_to_the_previous_three_pass_layout(h, w, seed):
    """The cloud is written once (four planes interleaved by OpenCV) into a message buffer; the
    previous implementation filled np.empty in passes and packed colour with pack_rgb."""
    from foundation_stereo_ros.pipeline import PointProjector
    from foundation_stereo_ros.pipeline.geometry import message_buffer_owner, packed_rgb_plane

    rng = np.random.default_rng(seed)
    depth = rng.uniform(0.1, 50.0, (h, w)).astype(np.float32)
    depth[rng.random((h, w)) < 0.3] = np.nan
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    fx, fy, cx, cy = rng.uniform(20, 900), rng.uniform(20, 900), rng.uniform(-5, w + 5), rng.uniform(-5, h + 5)
    cloud = PointProjector().cloud(depth, rgb, fx, fy, cx, cy)
    # The previous implementation, formula for formula.
    xr = ((np.arange(w, dtype=np.float64) - cx) / fx).astype(np.float32)[None, :]
    yr = ((np.arange(h, dtype=np.float64) - cy) / fy).astype(np.float32)[:, None]
    old = np.empty((h, w, 4), np.float32)
    np.multiply(depth, xr, out=old[..., 0])
    np.multiply(depth, yr, out=old[..., 1])
    old[..., 2] = depth
    old[..., 3] = pack_rgb(rgb).view(np.float32)
    np.testing.assert_array_equal(cloud.view(np.uint32), old.view(np.uint32))  # bits: NaN patterns too
    assert message_buffer_owner(cloud) is not None
    np.testing.assert_array_equal(packed_rgb_plane(rgb).view(np.uint32), pack_rgb(rgb))
    with pytest.raises(ValueError, match="uint8"):
        packed_rgb_plane(rgb.astype(np.uint16))
    with pytest.raises(ValueError, match="colour image"):
        PointProjector().cloud(depth, rgb[:, :-1] if w > 1 else rgb[:-1] if h > 1 else rgb[:, :0], fx, fy, cx, cy)


# ---------------------------------------------------------------------------------------------- processor
def scene_calibration(delta_cx=0.0):
    return calib(info(p=[F, 0, 100.0, 0, 0, F, 32, 0, 0, 0, 1, 0]), info(p=right_p(cx=100.0 - delta_cx)))


def test_sgbm_processor_recovers_the_scene():
    left, right, truth = textured_scene(H, W)
    proc = StereoProcessor(ProcessorConfig(backend="sgbm", sgbm_num_disparities=32))
    res = proc.process(DecodedPair(left, right, False), scene_calibration(delta_cx=4.0), ALL_OUTPUTS)
    valid = res.valid
    assert valid.mean() > 0.5
    raw = res.disparity + 4.0
    assert np.mean(np.abs(raw[valid] - truth[valid]) < 1.0) > 0.9
    # Depth of the background plane: f * B / (12 - delta_cx).
    bg = valid & (truth == 12)
    assert np.nanmedian(res.depth[bg]) == pytest.approx(F * B / (12 - 4.0), rel=0.02)
    assert res.min_disparity == 0 - 4.0 and res.max_disparity == 31 - 4.0 and res.delta_d == 1 / 16
    assert not res.rectified and res.left_rect is left  # already rectified input passes through
    np.testing.assert_array_equal(unpack_rgb(res.colors), left)
    assert res.disparity_color.shape == (H, W, 3)
    assert set(res.timings) >= {"rectify", "match", "depth", "points", "colorize", "total"}


def test_processor_computes_only_requested_outputs():
    left, right, _ = textured_scene(H, W)
    proc = StereoProcessor(ProcessorConfig(backend="sgbm", sgbm_num_disparities=32))
    res = proc.process(DecodedPair(left, right, False), scene_calibration(), Outputs(depth=False, points=False))
    assert res.depth is None and res.points is None and res.colors is None and res.disparity_color is None
    assert "depth" not in res.timings and "points" not in res.timings


def test_processor_rejects_mismatched_pairs_and_sizes():
    left, right, _ = textured_scene(H, W)
    proc = StereoProcessor(ProcessorConfig(backend="sgbm", sgbm_num_disparities=32))
    with pytest.raises(PairMismatchError):
        proc.process(DecodedPair(left, right[:, :-2], False), scene_calibration())
    with pytest.raises(CalibrationError) as e:
        proc.process(DecodedPair(left[:32], right[:32], False), scene_calibration())
    assert e.value.problem == "calibration_mismatch"


class ConstantNetwork:
    """A stand-in for FoundationStereo with a known output, to test the backend's resizing arithmetic."""

    def __init__(self, value: float) -> None:
        self.cfg = types.SimpleNamespace(max_disp=64)
        self.value = value
        self.seen = []

    def infer(self, left, right, iters, hierarchical, precision):
        import torch

        self.seen.append((tuple(left.shape), tuple(right.shape), iters, hierarchical, precision,
                          float(left.max()), left.dtype))
        return torch.full((1, 1) + tuple(left.shape[-2:]), self.value)


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
def test_network_scale_resizes_input_and_rescales_disparity(scale):
    net = ConstantNetwork(5.0)
    cfg = ProcessorConfig(backend="foundation_stereo", checkpoint="unused", device="cpu", iters=3, scale=scale)
    backend = FoundationStereoBackend(cfg, model=net)
    left, right, _ = textured_scene(H, W)
    disp = backend.compute(left, right)
    shape_l, shape_r, iters, hier, prec, vmax, dtype = net.seen[-1]
    assert shape_l == shape_r == (1, 3, round(H * scale), round(W * scale))
    assert iters == 3 and hier is False and prec == "fp32" and vmax > 1.0  # 0..255 input, not 0..1
    expected = 5.0 / scale
    u = np.arange(W)
    # Matches that fall left of the right image are invalid.
    assert np.isnan(disp[:, u < expected - 1e-3]).all()
    np.testing.assert_allclose(disp[:, u >= expected + 1], expected, rtol=1e-5)
    assert backend.search_range(W) == (0.0, pytest.approx(64 * W / round(W * scale)))


def test_reconfigured_processor_shares_the_loaded_network():
    net = ConstantNetwork(5.0)
    cfg = ProcessorConfig(backend="foundation_stereo", checkpoint="ckpt", device="cpu")
    proc = StereoProcessor(cfg, backend=FoundationStereoBackend(cfg, model=net))
    again = proc.reconfigured(cfg.replace(iters=7, scale=0.5))
    assert again.backend.model is net and again.backend.iters == 7 and again.rectifier is proc.rectifier
    sgbm = proc.reconfigured(cfg.replace(backend="sgbm"))
    assert sgbm.backend.name == "sgbm"


def test_unusable_checkpoints_and_devices_raise(tmp_path):
    with pytest.raises(BackendError, match="empty"):
        StereoProcessor(ProcessorConfig(backend="foundation_stereo", checkpoint="", device="cpu"))
    with pytest.raises(CheckpointError, match="not found"):
        StereoProcessor(ProcessorConfig(backend="foundation_stereo", checkpoint=str(tmp_path / "x.pth"), device="cpu"))
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="CUDA"):
            StereoProcessor(ProcessorConfig(backend="foundation_stereo", checkpoint=str(tmp_path), device="cuda"))
