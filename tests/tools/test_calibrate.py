"""`texteval calibrate` and the consumer's use of its file.

The fixture is miscalibrated by construction: each item has a true
distribution q over 0..5, the teacher's grade is drawn from q, and the model
publishes q sharpened (q**2 renormalised: temperature 0.5, overconfident).
The fitted temperature must come back near 2, the held-out ECE must at
least halve, and no grade may change.
"""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from consumer.contract import EvaluationResult, GradeRecord, Item, ItemStatus, Sampling
from consumer.corrections import latest_by_item
from consumer.engine.calibration import Calibration, CalibrationFileError, CalibrationTable, scaled
from consumer.engine.fake import FakeEngine
from consumer.pipeline.decisions import build_grade_record
from consumer.settings import Settings
from consumer.tools.calibrate import Labelled, calibrate, expected_calibration_error, held_out
from consumer.tools.cli import main
from consumer.tools.loop_sources import load_corrections, load_results

MODEL = "overconfident-model"
SHARPEN = 2.0  # the model publishes q ** SHARPEN: its true temperature is SHARPEN
N = 1200
AT = datetime(2026, 12, 1, tzinfo=UTC)
SAMPLING = Sampling(temperature=0.1, top_p=0.95, max_tokens=380, seed=0)


def fixture(tmp_path: Path, seed: int = 3) -> tuple[Path, Path, list[tuple[list[float], int]]]:
    rng = random.Random(seed)
    results, corrections, truth = [], [], []
    for i in range(N):
        centre, spread = rng.uniform(0, 5), rng.uniform(0.6, 2.5)
        weights = [math.exp(-abs(g - centre) * spread) for g in range(6)]
        q = [w / sum(weights) for w in weights]
        teacher = rng.choices(range(6), weights=q)[0]
        p = scaled(q, 1 / SHARPEN)
        published = [round(x, 6) for x in p]
        nota = published.index(max(published))
        results.append(
            EvaluationResult(
                result_id=f"cal#{i}", job_id="cal", item_index=i, id_alumno=f"s{i}", status=ItemStatus.OK,
                nota=nota, feedback="ok", error=None, model=MODEL, prompt_sha256="0" * 64, sampling=SAMPLING,
                latency_ms=1.0, produced_at=AT, nota_probabilities=published, confidence=published[nota],
                needs_review=published[nota] < 0.5,
            ).model_dump_json()
        )  # fmt: skip
        corrections.append(json.dumps({"job_id": "cal", "item_index": i, "nota": teacher}))
        truth.append((q, teacher))
    results_path, corrections_path = tmp_path / "results.jsonl", tmp_path / "corrections.jsonl"
    results_path.write_text("\n".join(results) + "\n")
    corrections_path.write_text("\n".join(corrections) + "\n")
    return results_path, corrections_path, truth


async def test_calibration_halves_the_held_out_error_and_keeps_every_grade(tmp_path: Path) -> None:
    results_path, corrections_path, _ = fixture(tmp_path)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    results = (await load_results(settings, str(results_path))).values
    corrections = latest_by_item((await load_corrections(settings, str(corrections_path))).values)
    [report] = calibrate(results, corrections, prompt_format="gemma_finetune")
    c = report.calibration
    assert c.temperature == pytest.approx(SHARPEN, rel=0.2)
    assert report.held_out_n > 250 and report.fitting_n + report.held_out_n == N
    assert c.ece_before is not None and c.ece_after is not None
    assert c.ece_before > 0.08  # miscalibrated by construction
    assert c.ece_after <= c.ece_before / 2
    for result in results.values():
        assert result.probabilities is not None
        raw = result.probabilities
        calibrated = c.apply(raw)
        assert calibrated.index(max(calibrated)) == raw.index(max(raw)) == result.nota


def test_ece_by_hand() -> None:
    # Two items at confidence 0.8 (bin 0.8-0.9), one right: |0.8 - 0.5| = 0.3, all of the weight.
    items = [Labelled("a", (0.8, 0.2, 0, 0, 0, 0), 0), Labelled("b", (0.8, 0.2, 0, 0, 0, 0), 1)]
    assert expected_calibration_error(items) == pytest.approx(0.3)
    assert expected_calibration_error([]) is None


def test_the_split_is_stable_and_near_its_share() -> None:
    ids = [f"job#{i}" for i in range(2000)]
    share = sum(held_out(i, 0.3) for i in ids) / len(ids)
    assert 0.27 < share < 0.33
    assert [held_out(i, 0.3) for i in ids] == [held_out(i, 0.3) for i in ids]


def test_temperature_keeps_the_order_isotonic_would_not_need_to() -> None:
    p = (0.05, 0.1, 0.4, 0.3, 0.1, 0.05)
    for t in (0.3, 1.0, 2.5, 10.0):
        q = scaled(p, t)
        assert sum(q) == pytest.approx(1.0)
        assert sorted(range(6), key=lambda g: q[g]) == sorted(range(6), key=lambda g: p[g])
    assert scaled((0.0, 1.0, 0, 0, 0, 0), 3.0)[0] == 0.0


def test_cli_writes_the_file_and_chooses_the_review_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results_path, corrections_path, _ = fixture(tmp_path)
    out = tmp_path / "calibration.json"
    code = main([
        "calibrate", "--results", str(results_path), "--corrections", str(corrections_path), "--erased", "none",
        "--prompt-format", "gemma_finetune", "--out", str(out), "--review-share", "0.2",
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "ECE on held-out corrections: before" in printed and "agreement expected on the rest" in printed
    table = CalibrationTable.load(out)
    entry = table.find(MODEL, "gemma_finetune")
    assert entry is not None and entry.temperature == pytest.approx(SHARPEN, rel=0.2)
    assert table.find(MODEL, "chat_template") is None
    line = next(ln for ln in printed.splitlines() if "REVIEW_CONFIDENCE=" in ln)
    flagged = float(line.split("sends ")[1].split("%")[0])
    assert 18.0 <= flagged <= 22.0
    assert out.stat().st_mode & 0o077 == 0


def test_a_bad_file_is_refused_with_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(CalibrationFileError, match="version"):
        CalibrationTable.loads('{"version": 9, "calibrations": []}')
    with pytest.raises(CalibrationFileError, match="positive"):
        CalibrationTable.loads(
            '{"version": 1, "calibrations": [{"model": "m", "prompt_format": "f", "temperature": 0}]}'
        )
    with pytest.raises(CalibrationFileError):
        CalibrationTable.loads("[1, 2]")


ITEM = Item(id_alumno="A1", curso="3r ESO", consigna="Explica la fotosíntesi.", respuesta="Les plantes fan oxigen.")


async def test_the_consumer_publishes_the_calibrated_distribution_and_records_the_raw_one() -> None:
    raw_engine = FakeEngine(review_below=0.5, screen_answers=False)
    calibrated_engine = FakeEngine(
        review_below=0.5, screen_answers=False, calibration=Calibration("fake", "gemma_finetune", 3.0)
    )
    raw = await raw_engine.grade(ITEM, "j#0")
    hot = await calibrated_engine.grade(ITEM, "j#0")
    assert raw.grade_confidence is not None and hot.grade_confidence is not None
    assert hot.nota is not None
    assert hot.nota == raw.nota  # a temperature never changes the grade
    assert hot.grade_confidence.raw_probabilities == raw.grade_confidence.probabilities
    expected = scaled(raw.grade_confidence.probabilities, 3.0)
    assert hot.grade_confidence.confidence == pytest.approx(expected[hot.nota], abs=1e-6)
    assert hot.grade_confidence.confidence < raw.grade_confidence.confidence  # T > 1 softens
    assert hot.grade_confidence.needs_review == (hot.grade_confidence.confidence < 0.5 or bool(hot.review_reasons))
    record = build_grade_record(
        job_id="j", item_index=0, item=ITEM, outcome=hot, engine=calibrated_engine, key=b"k" * 32
    )
    assert record.nota_probabilities == list(raw.grade_confidence.probabilities)
    assert record.confidence == raw.grade_confidence.confidence
    assert record.calibration_temperature == 3.0
    assert record.calibrated_confidence == hot.grade_confidence.confidence
    # Additive: a record without calibration carries neither field.
    plain = build_grade_record(job_id="j", item_index=0, item=ITEM, outcome=raw, engine=raw_engine, key=b"k" * 32)
    assert "calibration_temperature" not in plain.model_dump_json()
    assert GradeRecord.model_validate_json(record.model_dump_json()) == record


def test_factory_lookup_warns_on_an_unknown_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from consumer.engine.factory import calibration_for

    path = tmp_path / "cal.json"
    path.write_text(CalibrationTable((Calibration("m", "gemma_finetune", 1.7),)).dumps())
    settings = Settings(_env_file=None, CALIBRATION_FILE=path)  # type: ignore[call-arg]
    found = calibration_for(settings, "m", "gemma_finetune")
    assert found is not None and found.temperature == 1.7
    assert calibration_for(settings, "other", "gemma_finetune") is None
    assert "no calibration for model=other" in caplog.text


async def test_a_consumer_with_a_bad_calibration_file_stops_before_loading_the_model(tmp_path: Path) -> None:
    from consumer.pipeline.service import serve

    bad = tmp_path / "cal.json"
    bad.write_text('{"version": 1, "calibrations": [{"model": "m"}]}')
    settings = Settings(_env_file=None, CALIBRATION_FILE=bad, PORT=0)  # type: ignore[call-arg]
    assert await serve(settings, engine=FakeEngine()) == 2
    missing = Settings(_env_file=None, CALIBRATION_FILE=tmp_path / "none.json", PORT=0)  # type: ignore[call-arg]
    assert await serve(missing, engine=FakeEngine()) == 2
