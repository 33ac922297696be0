"""Test doubles shared by more than one test directory. (A double one
directory uses lives beside its tests: tests/pipeline/doubles.py,
tests/gateway/gateway_double.py.)

``FakeNvml``: a stand-in for the ``pynvml`` module, one GPU of a given size as
NVML reports it, where a test needs a GPU's answers on a machine without one
(``consumer.engine.gpu_memory.read_gpu_memory(nvml=...)``)."""

from __future__ import annotations

from dataclasses import dataclass, field


class NVMLError(Exception):
    pass


@dataclass
class _MemoryInfo:
    total: int
    used: int
    free: int


@dataclass
class FakeNvml:
    total_bytes: int
    used_bytes: int = 0
    name: str = "NVIDIA L40"
    calls: list[str] = field(default_factory=list)
    NVMLError: type[Exception] = NVMLError  # pynvml's names, camel case

    def nvmlInit(self) -> None:
        self.calls.append("init")

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self.calls.append(f"handle {index}")
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        self.calls.append(f"handle {uuid}")
        return uuid

    def nvmlDeviceGetMemoryInfo(self, handle: object) -> _MemoryInfo:
        return _MemoryInfo(self.total_bytes, self.used_bytes, self.total_bytes - self.used_bytes)

    def nvmlDeviceGetName(self, handle: object) -> str:
        return self.name
