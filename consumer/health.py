"""What "healthy" means, as plain data: no web framework here.

The poll loop builds a ``HealthReport``; ``consumer.http`` turns it into the
``/health`` answer. Keeping the type here means the data path never imports
FastAPI to say how it is doing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class HealthReport:
    """A snapshot of the consumer's health; the HTTP layer adds ``status`` and ``reasons`` to ``body``."""

    ready: bool
    reasons: list[str] = field(default_factory=list)  # why not ready: "engine loading", "draining", ...
    body: dict[str, object] = field(default_factory=dict)  # model_loaded, gpu_available, active_jobs, kafka, ...


class HealthSource(Protocol):
    def health_report(self) -> HealthReport: ...
