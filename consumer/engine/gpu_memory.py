"""The GPU's memory read through NVML, as vLLM's own platform layer reads it.

Asking torch (``mem_get_info``) would open a CUDA context in the consumer process:
a few hundred MB of GPU memory outside vLLM's share, for the life of the
process. NVML (the library behind nvidia-smi) answers without one. The
module is vLLM's copy of the official ``pynvml`` (``vllm.third_party``),
present in the CUDA and the CPU builds alike; on a machine without the NVIDIA
driver ``nvmlInit`` fails and the answer is "no GPU".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class GpuMemory:
    name: str
    total_bytes: int
    used_bytes: int  # by every process on the device, vLLM's engine included


def _vllm_nvml() -> Any:
    try:
        from vllm.third_party import pynvml
    except ImportError:
        return None
    return pynvml


def _physical_device(visible: str | None) -> int | str:
    """The device this process's GPU 0 is: the first CUDA_VISIBLE_DEVICES entry (an index or a UUID)."""
    first = (visible or "0").split(",")[0].strip() or "0"
    return int(first) if first.isdigit() else first


def read_gpu_memory(nvml: Any = None) -> GpuMemory | None:
    """The first visible GPU's name and memory; None without a GPU or driver.

    ``nvml``: a pynvml-compatible module (tests pass a stand-in); default vLLM's copy.
    """
    nvml = nvml if nvml is not None else _vllm_nvml()
    if nvml is None:
        return None
    try:
        nvml.nvmlInit()
    except nvml.NVMLError:
        return None  # no driver (libnvidia-ml.so missing) or no device
    try:
        device = _physical_device(os.environ.get("CUDA_VISIBLE_DEVICES"))
        if isinstance(device, int):
            handle = nvml.nvmlDeviceGetHandleByIndex(device)
        else:
            handle = nvml.nvmlDeviceGetHandleByUUID(device)
        info = nvml.nvmlDeviceGetMemoryInfo(handle)
        name = nvml.nvmlDeviceGetName(handle)
        return GpuMemory(
            name=name.decode() if isinstance(name, bytes) else str(name),
            total_bytes=int(info.total),
            used_bytes=int(info.used),
        )
    except nvml.NVMLError:
        return None
    finally:
        nvml.nvmlShutdown()
