"""Run ``texteval run --engine fake`` as real processes, to kill, stop and restart them.

Shared by the fault tests (a few runs in CI) and ``scripts/fault_matrix.py``
(many runs, printing the table).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import httpx

from consumer.settings import Settings, setting_fields
from consumer.tools.broker import free_port

REPO = Path(__file__).resolve().parents[2]


def service_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process read the same settings."""
    env = {**os.environ, "LOG_LEVEL": "INFO", "HOST": "127.0.0.1", "KAFKA_CREATE_TOPICS": "false"}
    for field in setting_fields():
        value = getattr(getattr(settings, field.section), field.name)
        if value is not None and field.section != "http":
            env[field.env] = str(value.get_secret_value() if hasattr(value, "get_secret_value") else value)
    return env


class ServiceProcess:
    """One consumer process with the fake engine; its log goes to a file."""

    def __init__(self, settings: Settings, log_dir: Path, name: str, *, delay_ms: float = 100,
                 concurrency: int = 64) -> None:  # fmt: skip
        self.settings = settings
        self.log_path = log_dir / f"{name}.log"
        self.port = free_port()
        self._args = ["--fake-delay-ms", str(delay_ms), "--fake-concurrency", str(concurrency)]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> ServiceProcess:
        env = {**service_env(self.settings), "PORT": str(self.port)}
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "consumer.tools.cli", "run", "--engine", "fake", *self._args,
                cwd=REPO, env=env, stdout=log, stderr=log,
            )  # fmt: skip
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def _get_health(self) -> httpx.Response | None:
        try:
            async with httpx.AsyncClient(timeout=1.0) as client:
                return await client.get(f"http://127.0.0.1:{self.port}/health")
        except httpx.TransportError:
            return None

    async def health(self) -> int | None:
        response = await self._get_health()
        return None if response is None else response.status_code

    async def health_body(self) -> str:
        response = await self._get_health()
        return "unreachable" if response is None else response.text

    async def wait_healthy(self, timeout_s: float = 60) -> float:
        started = time.monotonic()
        while await self.health() != 200:
            if not self.running:
                raise AssertionError(f"consumer exited: {self.log_tail()}")
            if time.monotonic() - started > timeout_s:
                raise AssertionError(f"consumer not healthy in {timeout_s} s: {self.log_tail()}")
            await asyncio.sleep(0.1)
        return time.monotonic() - started

    def kill(self) -> None:
        if self.running and self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        if self.running and self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)

    async def wait(self, timeout_s: float = 60) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout_s)

    async def close(self) -> None:
        self.kill()
        if self.proc is not None:
            await self.proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
