"""The start-up canary against the fake engine: pass, miss, tolerance, error outcomes, bad files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import pytest

from consumer.contract import Item
from consumer.engine.base import GradingEngine
from consumer.engine.canary import (
    CanaryFileError,
    CanaryItem,
    CanaryRecordError,
    dump_canary,
    load_canary,
    record_canary,
    run_canary,
)
from consumer.engine.fake import FakeEngine, deterministic_script
from consumer.engine.output import Generation
from consumer.settings import Settings
from tests.helpers import DATA

SECRET = "Text secret de l'alumne que no ha de sortir mai"


def items(count: int) -> list[Item]:
    return [
        Item(
            id_alumno=f"C{index}",
            curso="3r ESO",
            consigna="Explica el cicle de l'aigua.",
            respuesta=f"{SECRET} {index}",
        )
        for index in range(1, count + 1)
    ]


def fake_grade(item: Item) -> int:
    nota = json.loads(deterministic_script(item, 0).text)["nota"]
    assert isinstance(nota, int)
    return nota


def canary(shifts: dict[int, int] | None = None, count: int = 5) -> list[CanaryItem]:
    """The fake engine's own grades, with the 1-based items in ``shifts`` moved by that many points (clamped)."""
    shifts = shifts or {}
    out = []
    for index, item in enumerate(items(count), start=1):
        nota = fake_grade(item)
        if index in shifts:
            nota = nota + shifts[index] if 0 <= nota + shifts[index] <= 5 else nota - shifts[index]
        out.append(CanaryItem(item=item, nota=nota))
    return out


async def test_matching_canary_passes_and_grades_all_items_at_once() -> None:
    engine = FakeEngine(delay_s=0.01)
    verdict = await run_canary(engine, canary(), tolerance=0)
    assert verdict.passed
    assert verdict.items == 5
    assert verdict.grades == tuple(fake_grade(item) for item in items(5))
    assert engine.max_in_flight == 5  # in parallel through the normal grade, not one by one
    assert verdict.reason() == "canary passed: 5 items within tolerance 0"


async def test_miss_beyond_tolerance_fails_with_indexes_ids_and_grades_only() -> None:
    entries = canary({2: 1, 4: 3})
    verdict = await run_canary(FakeEngine(), entries, tolerance=0)
    assert not verdict.passed
    assert [miss.index for miss in verdict.misses] == [2, 4]
    reason = verdict.reason()
    assert reason.startswith("canary failed: 2 of 5 items beyond tolerance 0 (item 2 (C2): expected ")
    got = verdict.grades[1]
    assert f"item 2 (C2): expected {entries[1].nota}, got {got}" in reason
    assert SECRET not in reason
    assert "Explica" not in reason


async def test_tolerance_allows_a_near_grade_but_not_a_far_one() -> None:
    entries = canary({2: 1, 4: 3})
    verdict = await run_canary(FakeEngine(), entries, tolerance=1)
    assert [miss.index for miss in verdict.misses] == [4]
    assert "1 of 5 items beyond tolerance 1" in verdict.reason()
    assert (await run_canary(FakeEngine(), entries, tolerance=3)).passed


async def test_an_error_outcome_is_a_miss_whatever_the_tolerance() -> None:
    def broken(item: Item, attempt: int) -> Generation:
        if item.id_alumno == "C3":
            return Generation(text="{not json", finish_reason="stop", output_tokens=3)
        return deterministic_script(item, attempt)

    verdict = await run_canary(FakeEngine(script=broken), canary(), tolerance=5)
    assert [(miss.index, miss.got) for miss in verdict.misses] == [(3, None)]
    assert "item 3 (C3): expected" in verdict.reason()
    assert "got error invalid_output" in verdict.reason()


async def test_reason_lists_three_misses_and_counts_the_rest() -> None:
    verdict = await run_canary(FakeEngine(), canary({i: 3 for i in range(1, 6)}), tolerance=0)
    reason = verdict.reason()
    assert "5 of 5 items" in reason
    assert "item 3 (C3)" in reason
    assert "item 4 (C4)" not in reason
    assert reason.endswith("; +2 more)")


def test_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "canary.jsonl"
    entries = canary()
    path.write_text(dump_canary(entries) + "\n", encoding="utf-8")  # a trailing blank line is fine
    assert load_canary(path) == entries


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            '{"item": {"id_alumno": "X", "curso": "c", "consigna": "q", "respuesta": "SECRET"}, "nota": 7}',
            "line 2: nota",
        ),
        ('{"item": {"id_alumno": "X", "curso": "c", "respuesta": "SECRET"}, "nota": 3}', "line 2: item.consigna"),
        ('{"item": {"id_alumno": "X", "curso": "c", "consigna": "q", "respuesta": "SECRET"}}', "line 2: nota"),
        ('{"item": "SECRET", "nota": 3', "line 2: "),
    ],
)
def test_bad_file_names_line_and_field_never_the_text(tmp_path: Path, line: str, expected: str) -> None:
    path = tmp_path / "canary.jsonl"
    path.write_text(dump_canary(canary(count=1)) + line + "\n", encoding="utf-8")
    with pytest.raises(CanaryFileError) as raised:
        load_canary(path)
    assert expected in str(raised.value)
    assert "SECRET" not in str(raised.value)


def test_empty_or_missing_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(CanaryFileError, match="no items"):
        load_canary(empty)
    with pytest.raises(CanaryFileError, match="cannot read it"):
        load_canary(tmp_path / "missing.jsonl")


async def test_record_gives_the_engines_grades_which_then_pass() -> None:
    recorded = await record_canary(FakeEngine(), items(5), runs=2)
    assert [entry.nota for entry in recorded] == [fake_grade(item) for item in items(5)]
    assert (await run_canary(FakeEngine(), recorded, tolerance=0)).passed


async def test_record_refuses_a_grade_that_moves_between_runs() -> None:
    calls = {"C2": 0}

    def drifting(item: Item, attempt: int) -> Generation:
        if item.id_alumno != "C2":
            return deterministic_script(item, attempt)
        calls["C2"] += 1
        nota = calls["C2"] % 2 + 2  # 3 on the first run, 2 on the second
        return Generation(text=json.dumps({"nota": nota, "feedback": "Bé."}), finish_reason="stop", output_tokens=5)

    with pytest.raises(CanaryRecordError, match=r"^item 2: grades 3/2 across runs$"):
        await record_canary(FakeEngine(script=drifting), items(3), runs=2)


SHIPPED = DATA / "canary-stand-in.jsonl"


def test_the_shipped_canary_is_valid_and_spread_over_grades() -> None:
    shipped = load_canary(SHIPPED)
    assert 4 <= len(shipped) <= 6  # a few short items: seconds on the CPU stand-in
    assert len({entry.nota for entry in shipped}) >= 2  # a one-grade canary cannot tell a constant model


async def test_the_shipped_canary_passes_on_the_stand_in_twice(real_engine: object, engine_settings: Settings) -> None:
    if engine_settings.engine.model_name is not None:
        pytest.skip("the shipped canary was recorded on the default CPU stand-in")
    engine = cast(GradingEngine, real_engine)
    shipped = load_canary(SHIPPED)
    first = await run_canary(engine, shipped, tolerance=engine_settings.engine.canary_tolerance)
    assert first.passed, first.reason()
    again = await run_canary(engine, shipped, tolerance=engine_settings.engine.canary_tolerance)
    assert again.grades == first.grades
    # The figure the issue targets (<= 10 s added to readiness); printed, not asserted (loaded machines).
    print(f"canary on the stand-in: {first.items} items in {first.duration_s:.1f} s, again {again.duration_s:.1f} s")
