"""The network exported by :func:`~foundation_stereo_ros.analysis.onnx_export.export_onnx`, run by
ONNX Runtime on numpy images.

An :class:`OnnxRunner` takes a rectified RGB uint8 pair ``(H, W, 3)`` whose size pads (to
multiples of 32) to the graph's input size and returns the network's raw float32 ``(H, W)``
disparity in pixels (``x_left - x_right``); the padding and the crop back are done inside.
Which execution providers to try is the caller's choice (the node's policy is
:func:`foundation_stereo_ros.pipeline.backends.onnx_provider_list`). onnx and onnxruntime are
imported on first use.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..model.padding import InputPadder

#: Prefix of the metadata entries an export records (iterations, variant, max_disp, sizes).
METADATA_PREFIX = "foundation_stereo."


def read_export_metadata(path: Union[str, os.PathLike]) -> Dict[str, str]:
    """The ``foundation_stereo.*`` metadata of an exported file (prefix removed); {} if none."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key[len(METADATA_PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(METADATA_PREFIX)}


def check_pair(left: np.ndarray, right: np.ndarray) -> Tuple[int, int]:
    """(H, W) of a valid RGB uint8 pair; ValueError naming the problem otherwise."""
    for name, img in (("left", left), ("right", right)):
        if not isinstance(img, np.ndarray):
            raise ValueError(f"{name} image must be a numpy array, got {type(img).__name__}")
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"{name} image must be (H, W, 3) uint8 RGB, got {img.shape} {img.dtype}")
    if left.shape != right.shape:
        raise ValueError(f"left and right images differ in size: {left.shape[:2]} vs {right.shape[:2]}")
    h, w = left.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"empty image ({h}x{w})")
    return h, w


def pad_to_network(image: np.ndarray, padder: InputPadder) -> np.ndarray:
    """(1, 3, H', W') float32 of an (H, W, 3) uint8 image, edge-padded as InputPadder pads tensors."""
    padded = np.pad(image, ((padder.top, padder.bottom), (padder.left, padder.right), (0, 0)), mode="edge")
    return np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32)


class OnnxRunner:
    """An exported network in an ONNX Runtime session, for repeated calls at its fixed input size.

    ``providers``: the execution providers to try, in order (each must be installed). TensorRT
    runs fp16 unless ``trt_fp16=False`` and caches its engines in ``trt_cache_dir``.
    """

    def __init__(self, path: Union[str, os.PathLike], providers: Sequence[str], device_id: int = 0,
                 trt_fp16: bool = True, trt_cache_dir: Optional[str] = None, trt_workspace_bytes: int = 4 << 30,
                 intra_op_threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ValueError("the ONNX Runtime runner needs the 'onnxruntime' package "
                             "(onnxruntime-gpu, or NVIDIA's wheel on Jetson)") from None

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(f"{path}: ONNX model not found (make one with foundation-stereo-export)")
        providers = list(providers)
        if not providers:
            raise ValueError("the providers list is empty")
        available = ort.get_available_providers()
        missing = [p for p in providers if p not in available]
        if missing:
            raise ValueError(f"ONNX Runtime execution provider(s) {missing} not available; this onnxruntime has "
                             f"{list(available)} (onnxruntime-gpu brings CUDA/TensorRT)")
        options: List[Dict[str, object]] = []
        for p in providers:
            if p == "TensorrtExecutionProvider":
                opt: Dict[str, object] = {"device_id": device_id, "trt_fp16_enable": trt_fp16,
                                          "trt_max_workspace_size": int(trt_workspace_bytes)}
                if trt_cache_dir:
                    opt.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(trt_cache_dir))
                options.append(opt)
            elif p == "CUDAExecutionProvider":
                options.append({"device_id": device_id})
            else:
                options.append({})
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads > 0:
            so.intra_op_num_threads = intra_op_threads
        try:
            self.session = ort.InferenceSession(path, sess_options=so, providers=providers, provider_options=options)
        except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph ...)
            raise ValueError(f"{path}: ONNX Runtime cannot load it: {str(e).splitlines()[0] if str(e) else e}") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        if set(inputs) != {"left", "right"}:
            raise ValueError(f"{path}: expected inputs 'left' and 'right', found {sorted(inputs)}")
        shape = inputs["left"].shape
        if len(shape) != 4 or not all(isinstance(s, int) for s in shape[2:]):
            raise ValueError(f"{path}: expected a fixed (1, 3, H, W) input, found {shape}")
        self.input_size = (int(shape[2]), int(shape[3]))
        self.metadata = read_export_metadata(path)
        self.iters = int(self.metadata.get("iters", 0))
        self.max_disp = float(self.metadata.get("max_disp", 0.0))
        self.providers = self.session.get_providers()

    def __call__(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """(H, W) float32 network disparity of an (H, W, 3) uint8 RGB pair."""
        h, w = check_pair(left, right)
        padder = InputPadder(h, w)
        if padder.padded_size != self.input_size:
            ih, iw = self.input_size
            raise ValueError(f"this ONNX model was exported for {ih}x{iw} network input (camera images that pad "
                             f"to it, e.g. {self.metadata.get('image_height', ih)}x"
                             f"{self.metadata.get('image_width', iw)}); got {h}x{w} images. Export again with "
                             f"foundation-stereo-export --height {h} --width {w}")
        out = self.session.run(["disparity"], {"left": pad_to_network(left, padder),
                                               "right": pad_to_network(right, padder)})[0]  # (1, 1, H', W')
        ph, pw = self.input_size
        return np.ascontiguousarray(out[0, 0, padder.top:ph - padder.bottom, padder.left:pw - padder.right],
                                    dtype=np.float32)
