"""A known-answer check at start-up (CANARY_FILE, issue 22.5).

A wrong model, tokenizer or chat template still emits valid JSON (the grammar
guarantees that much) and grades garbage with ``/health`` green. A canary is
a few items with the grades a validated deployment gave them; they are
graded through the engine's normal ``grade`` before the consumer joins its
group, and a grade further than the tolerance from the recorded one keeps
the consumer out of the group with the reason.

It needs only the ``GradingEngine`` Protocol, so it lives in the engine layer
(the service decides what a verdict means for readiness). Reasons and errors
name line numbers, item ids and grades only, never a text.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from consumer.contract import Item, ItemStatus
from consumer.engine.base import GradingEngine
from consumer.validation import validation_problems


class CanaryFileError(ValueError):
    """The canary file cannot be used; the message names the line and field, never the text."""


class CanaryItem(BaseModel):
    """One line of a canary file: an item and the grade a validated deployment gave it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    item: Item
    nota: int = Field(ge=0, le=5)


def load_canary(path: Path) -> list[CanaryItem]:
    """The items of a JSONL canary file (blank lines skipped); at least one."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CanaryFileError(f"canary file {path}: cannot read it ({type(exc).__name__})") from None
    items: list[CanaryItem] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            items.append(CanaryItem.model_validate_json(line))
        except ValidationError as exc:
            # validation_problems quotes locations and messages, never the input.
            problems = validation_problems(exc, root="line")
            raise CanaryFileError(f"canary file {path} line {number}: {problems}") from None
    if not items:
        raise CanaryFileError(f"canary file {path}: no items")
    return items


def dump_canary(items: list[CanaryItem]) -> str:
    """The JSONL text of a canary file (what ``load_canary`` reads back)."""
    return "".join(json.dumps(entry.model_dump(mode="json"), ensure_ascii=False) + "\n" for entry in items)


def write_canary(path: Path, items: list[CanaryItem]) -> None:
    path.write_text(dump_canary(items), encoding="utf-8")


@dataclass(frozen=True, slots=True)
class CanaryMiss:
    index: int  # 1-based line among the canary items
    id_alumno: str
    expected: int
    got: int | None  # None: the engine gave an error outcome, not a grade
    error_code: str | None = None

    def describe(self) -> str:
        got = f"got {self.got}" if self.got is not None else f"got error {self.error_code}"
        return f"item {self.index} ({self.id_alumno}): expected {self.expected}, {got}"


@dataclass(frozen=True, slots=True)
class CanaryVerdict:
    items: int
    tolerance: int
    misses: tuple[CanaryMiss, ...]
    grades: tuple[int | None, ...]  # what the engine gave, in file order (for recording and reports)
    duration_s: float

    @property
    def passed(self) -> bool:
        return not self.misses

    def reason(self, shown: int = 3) -> str:
        """``canary failed: 2 of 5 items beyond tolerance 1 (item 3 (a3): expected 4, got 1; ...)``."""
        if self.passed:
            return f"canary passed: {self.items} items within tolerance {self.tolerance}"
        details = "; ".join(miss.describe() for miss in self.misses[:shown])
        more = f"; +{len(self.misses) - shown} more" if len(self.misses) > shown else ""
        return (
            f"canary failed: {len(self.misses)} of {self.items} items beyond tolerance {self.tolerance} "
            f"({details}{more})"
        )


async def run_canary(engine: GradingEngine, items: list[CanaryItem], *, tolerance: int) -> CanaryVerdict:
    """Grade every canary item at once (the engine batches them) and compare.

    A grade is a miss when ``|got - expected| > tolerance``; an error outcome
    is always a miss (a model that cannot grade a validated item is broken).
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcomes = await asyncio.gather(
        *(engine.grade(entry.item, f"canary-{index}") for index, entry in enumerate(items, start=1))
    )
    misses: list[CanaryMiss] = []
    for index, (entry, outcome) in enumerate(zip(items, outcomes, strict=True), start=1):
        if outcome.status is not ItemStatus.OK or outcome.nota is None:
            code = outcome.error.code.value if outcome.error is not None else "unknown"
            misses.append(CanaryMiss(index, entry.item.id_alumno, entry.nota, None, code))
        elif abs(outcome.nota - entry.nota) > tolerance:
            misses.append(CanaryMiss(index, entry.item.id_alumno, entry.nota, outcome.nota))
    return CanaryVerdict(
        items=len(items),
        tolerance=tolerance,
        misses=tuple(misses),
        grades=tuple(outcome.nota for outcome in outcomes),
        duration_s=loop.time() - started,
    )


class CanaryRecordError(RuntimeError):
    """The engine cannot give these items a canary: an error outcome, or grades that moved between runs."""


async def record_canary(engine: GradingEngine, items: list[Item], *, runs: int = 2) -> list[CanaryItem]:
    """The engine's grades of ``items`` as a canary, graded ``runs`` times.

    Run on a deployment already validated (its grades checked by people): an
    item the engine cannot grade, or whose grade moves between runs, would
    make the canary fail a healthy model, so it is refused with its index.
    """
    placeholder = [CanaryItem(item=item, nota=0) for item in items]
    seen: list[tuple[int | None, ...]] = []
    for _ in range(max(1, runs)):
        seen.append((await run_canary(engine, placeholder, tolerance=5)).grades)
    problems = []
    for index, grades in enumerate(zip(*seen, strict=True), start=1):
        if None in grades:
            problems.append(f"item {index}: error outcome")
        elif len(set(grades)) > 1:
            problems.append(f"item {index}: grades {'/'.join(str(grade) for grade in grades)} across runs")
    if problems:
        raise CanaryRecordError("; ".join(problems))
    return [CanaryItem(item=item, nota=grade) for item, grade in zip(items, seen[0], strict=True) if grade is not None]
