"""The one back-off rule of the pipeline: wait longer after each failure in a row, up to a cap.

Used wherever something is tried again after a failure that is not the
input's fault: a record whose output could not be sent (per record, so one
record failing again does not slow the others), a fetch the broker refused,
a control topic not readable yet. ``first_s == max_s`` is a fixed wait.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    first_s: float  # after the first failure
    max_s: float  # never longer than this
    factor: float = 2.0  # each further failure in a row multiplies the wait

    def __post_init__(self) -> None:
        if self.first_s < 0 or self.max_s < self.first_s or self.factor < 1:
            raise ValueError(f"back-off needs 0 <= first_s <= max_s and factor >= 1, got {self}")

    def delay_s(self, failures: int) -> float:
        """The wait after ``failures`` failures in a row (1 = the first)."""
        if failures < 1:
            return 0.0
        # Capped before the power overflows a float (thousands of failures in a row).
        return min(self.max_s, self.first_s * self.factor ** min(failures - 1, 64))
