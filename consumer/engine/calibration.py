"""Temperature scaling of the grade distribution: the confidence teachers' review rests on, calibrated.

The model's distribution over 0..5 (confidence.py) is its own: published
LLM graders are over- or under-confident (calibration errors of 0.10-0.17),
and the CPU stand-in's confidence sits at 0.27-0.55 whatever it gets right.
``texteval calibrate`` (consumer/tools/calibrate.py) fits one temperature
``T`` per model and prompt format on teachers' corrections; the consumer
then publishes ``p_i ** (1/T) / sum_j p_j ** (1/T)``, which is
``softmax(log p / T)``: the digit logits divided by ``T`` (a log-softmax only
shifts them by a constant, which the renormalisation cancels).

Why temperature scaling, not isotonic regression: one parameter, fitted on a
few hundred corrections without overfitting, and a strictly increasing map
of every logit by the same factor, so the order of the six grades is kept
and the most probable grade (``nota``, contract 1.3) cannot change.
Isotonic regression maps each confidence on its own: two grades' calibrated
values can cross, so the argmax (the grade given) could move, or ties
appear; a calibration must not change a grade.

``CALIBRATION_FILE`` holds the fitted temperatures keyed by model name and
prompt format; a key not in it grades with the raw distribution (the
factory logs a warning line): a calibration fitted on one model says
nothing about another.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILE_VERSION = 1


def scaled(probabilities: Sequence[float], temperature: float) -> tuple[float, ...]:
    """``softmax(log p / T)``; a zero stays zero, the order of the values is kept."""
    if temperature == 1.0:
        return tuple(probabilities)
    logs = [math.log(p) if p > 0 else -math.inf for p in probabilities]
    top = max(logs)
    weights = [0.0 if v == -math.inf else math.exp((v - top) / temperature) for v in logs]
    total = sum(weights)
    return tuple(w / total for w in weights)


@dataclass(frozen=True, slots=True)
class Calibration:
    """One fitted temperature, for one model and prompt format."""

    model: str
    prompt_format: str
    temperature: float
    fitted_on: int = 0  # corrections used
    ece_before: float | None = None  # on the held-out corrections
    ece_after: float | None = None

    def apply(self, probabilities: Sequence[float]) -> tuple[float, ...]:
        return scaled(probabilities, self.temperature)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt_format": self.prompt_format,
            "temperature": self.temperature,
            "fitted_on": self.fitted_on,
            "ece_before": self.ece_before,
            "ece_after": self.ece_after,
        }


class CalibrationFileError(ValueError):
    """The file is not a calibration file (what is wrong, never its whole content)."""


@dataclass(frozen=True, slots=True)
class CalibrationTable:
    entries: tuple[Calibration, ...]

    def find(self, model: str, prompt_format: str) -> Calibration | None:
        return next((c for c in self.entries if (c.model, c.prompt_format) == (model, prompt_format)), None)

    def with_entry(self, calibration: Calibration) -> CalibrationTable:
        """This table with ``calibration`` in place of the one for its key."""
        kept = [c for c in self.entries if (c.model, c.prompt_format) != (calibration.model, calibration.prompt_format)]
        return CalibrationTable((*kept, calibration))

    def dumps(self) -> str:
        return json.dumps({"version": FILE_VERSION, "calibrations": [c.as_dict() for c in self.entries]}, indent=2)

    @classmethod
    def loads(cls, text: str) -> CalibrationTable:
        try:
            data = json.loads(text)
            if data.get("version") != FILE_VERSION:
                raise CalibrationFileError(f"version must be {FILE_VERSION}")
            entries = []
            for number, raw in enumerate(data["calibrations"]):
                temperature = float(raw["temperature"])
                if not (math.isfinite(temperature) and temperature > 0):
                    raise CalibrationFileError(f"calibration {number}: temperature must be a positive number")
                entries.append(
                    Calibration(
                        model=str(raw["model"]),
                        prompt_format=str(raw["prompt_format"]),
                        temperature=temperature,
                        fitted_on=int(raw.get("fitted_on", 0)),
                        ece_before=raw.get("ece_before"),
                        ece_after=raw.get("ece_after"),
                    )
                )
        except CalibrationFileError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CalibrationFileError(f"not a calibration file ({type(exc).__name__}: {exc})") from None
        return cls(tuple(entries))

    @classmethod
    def load(cls, path: Path) -> CalibrationTable:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CalibrationFileError(f"calibration file {path}: cannot read it ({type(exc).__name__})") from None
        try:
            return cls.loads(text)
        except CalibrationFileError as exc:
            raise CalibrationFileError(f"calibration file {path}: {exc}") from None
