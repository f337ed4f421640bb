"""The machine a benchmark ran on, and the peak rate of its GPU (for the FLOP floor)."""
from __future__ import annotations

import os
import platform
from typing import Any, Dict, Optional

import torch

# Peak dense bf16 tensor-core rate (TFLOP/s) from NVIDIA's data sheets, by the name CUDA reports.
# The first entry whose key is in the name wins; other GPUs need --peak-tflops for the floor.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))


def peak_tflops_for(gpu_name: Optional[str]) -> Optional[float]:
    for key, tflops in PEAK_BF16_TFLOPS:
        if gpu_name and key in gpu_name:
            return tflops
    return None


def _cpu_name() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    return cpu


def machine_info(device) -> Dict[str, Any]:
    """CPU, GPU, library versions and thread count: what the figures depend on."""
    info = dict(cpu=_cpu_name(), cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
                python=platform.python_version(), torch=torch.__version__, platform=platform.platform(),
                device=str(device))
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    try:  # optional: only the onnxruntime mode needs it
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info
