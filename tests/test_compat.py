"""The compat modules hold workarounds written for one release of vLLM and of
uvicorn: these tests fail when another release is installed, so whoever
upgrades re-checks each workaround instead of carrying it on blindly."""

from __future__ import annotations

import pytest

from consumer import uvicorn_compat
from consumer.engine import vllm_compat


def test_vllm_is_the_release_the_workarounds_were_written_for() -> None:
    installed = vllm_compat.installed_version()
    if installed is None:
        pytest.skip("vLLM is not installed")
    assert installed == vllm_compat.WRITTEN_FOR_VERSION, (
        f"vLLM {installed} is installed; consumer/engine/vllm_compat.py was written for "
        f"{vllm_compat.WRITTEN_FOR_VERSION}: re-check each workaround there, then update WRITTEN_FOR_VERSION"
    )


def test_uvicorn_is_the_release_the_workarounds_were_written_for() -> None:
    installed = uvicorn_compat.installed_version()
    assert installed == uvicorn_compat.WRITTEN_FOR_VERSION, (
        f"uvicorn {installed} is installed; consumer/uvicorn_compat.py was written for "
        f"{uvicorn_compat.WRITTEN_FOR_VERSION}: re-check both overrides there, then update WRITTEN_FOR_VERSION"
    )


def test_the_pins_and_the_compat_modules_name_the_same_releases() -> None:
    from tests.helpers import REPO

    for constraints in ("constraints-cpu.txt", "constraints-gpu.txt"):
        pins = (REPO / "requirements" / constraints).read_text(encoding="utf-8").splitlines()
        assert f"uvicorn=={uvicorn_compat.WRITTEN_FOR_VERSION}" in pins, constraints
        assert any(pin in pins for pin in (f"{name}=={vllm_compat.WRITTEN_FOR_VERSION}"
                                           for name in vllm_compat.DISTRIBUTIONS)), constraints  # fmt: skip
