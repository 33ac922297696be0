"""`texteval export-training`: the fine-tune's format byte for byte, and the rule for grade-only corrections."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from consumer.contract import Item
from consumer.corrections import Correction, latest_by_item
from consumer.engine.output import Generation, ParsedGrade, output_regex, parse_generation
from consumer.engine.prompt import PromptBuilder
from consumer.settings import Settings
from consumer.tools.cli import main
from consumer.tools.loop_sources import GradedItem
from consumer.tools.training_export import build_export

TESTS_DATA = Path(__file__).resolve().parent.parent / "data"
REPO_DATA = Path(__file__).resolve().parents[2] / "data"
JOB = "school-1/term-1/x"
FEEDBACK_CHARS = Settings(_env_file=None).engine.feedback_chars  # type: ignore[call-arg]


def golden_item() -> Item:
    return Item.model_validate_json((REPO_DATA / "golden_item_A001.json").read_bytes())


def correction(index: int, nota: int, feedback: str | None = None) -> Correction:
    return Correction(job_id=JOB, item_index=index, nota=nota, feedback=feedback,
                      corrected_at=datetime(2026, 12, 2, 10, tzinfo=UTC))  # fmt: skip


def result(index: int, nota: int | None, feedback: str | None = "Bon treball, cal precisar més.") -> GradedItem:
    ok = nota is not None
    return GradedItem(JOB, index, ok, nota, feedback if ok else None, "m", "0" * 64, None)


def export_of(corrections: list[Correction], results: list[GradedItem], items: dict[int, Item]) -> Any:
    return build_export(
        latest_by_item(corrections),
        {r.result_id: r for r in results},
        {f"{JOB}#{index}": item for index, item in items.items()},
        feedback_max_chars=FEEDBACK_CHARS,
    )


def test_prompt_is_the_golden_prompt_and_completion_is_what_the_model_emits() -> None:
    item = golden_item()
    export = export_of(
        [correction(0, 3, "  Bona explicació, però cal citar la clorofil·la.  ")], [result(0, 4)], {0: item}
    )
    (line,) = export.lines
    # Byte for byte the fine-tune's training prompt (the golden file) and the renderer's output.
    assert line["prompt"].encode() == (REPO_DATA / "golden_prompt_A001.txt").read_bytes()
    assert line["prompt"] == PromptBuilder.gemma_finetune().build(item).text
    # The completion is a string the serving grammar accepts, in its exact layout, and parses back.
    assert line["completion"] == '{"nota": 3, "feedback": "Bona explicació, però cal citar la clorofil·la."}'
    assert re.fullmatch(output_regex(FEEDBACK_CHARS), line["completion"])
    parsed = parse_generation(Generation(line["completion"], "stop", output_tokens=1))
    assert parsed == ParsedGrade(3, "Bona explicació, però cal citar la clorofil·la.")
    assert (line["job_id"], line["item_index"], line["target_source"]) == (JOB, 0, "teacher")


def test_grade_only_corrections_keep_the_model_feedback_only_when_the_grade_stands() -> None:
    item = golden_item()
    items = dict.fromkeys(range(6), item)
    export = export_of(
        [
            correction(0, 4),  # grade confirmed: the model's feedback is confirmed with it
            correction(1, 2),  # grade changed, no feedback: the model's feedback argues for 4
            correction(2, 3),  # the result was an error: no feedback to keep
            correction(3, 1, 'Has escrit "fotosintesi" sense accent.'),  # `"` the grammar cannot emit
            correction(4, 2, "x" * (FEEDBACK_CHARS + 1)),  # longer than the grammar's bound
            correction(9, 2, "Bé."),  # no request text for item 9
        ],
        [result(0, 4), result(1, 4), result(2, None), result(3, 1), result(4, 2)],
        items,
    )
    (line,) = export.lines
    assert line["item_index"] == 0 and line["target_source"] == "model_feedback_confirmed"
    assert json.loads(line["completion"]) == {"nota": 4, "feedback": "Bon treball, cal precisar més."}
    assert dict(export.excluded) == {"grade_only_changed": 2, "feedback_outside_grammar": 2, "request_not_found": 1}


def test_the_correction_applied_last_is_the_target_whatever_its_corrected_at() -> None:
    # Contract 1.3: the order applied (topic or file order) decides, not the teacher's clock.
    dated_later = correction(0, 2, "Segona lectura.").model_copy(
        update={"corrected_at": datetime(2026, 12, 3, tzinfo=UTC)}
    )
    applied_last = correction(0, 1, "Primera lectura.")
    export = export_of([dated_later, applied_last], [result(0, 4)], {0: golden_item()})
    assert [json.loads(line["completion"]) for line in export.lines] == [{"nota": 1, "feedback": "Primera lectura."}]


def test_the_command_joins_the_fixture_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "train.jsonl"
    out.write_text("")
    out.chmod(0o644)  # an older file readable by others: the export must close it
    args = [f"--{name}={TESTS_DATA / f'agreement_{name}.jsonl'}" for name in ("results", "corrections", "requests")]
    assert main(["export-training", *args, "--erased", "none", "--out", str(out)]) == 0
    assert out.stat().st_mode & 0o777 == 0o600  # students' texts: owner-only
    exported = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    requests = [json.loads(line) for line in (TESTS_DATA / "agreement_requests.jsonl").read_text().splitlines()]
    texts = {(r["job_id"], i): Item.model_validate(item) for r in requests for i, item in enumerate(r["items"])}
    builder = PromptBuilder.gemma_finetune()
    assert len(exported) > 20
    for line in exported:
        assert line["prompt"] == builder.build(texts[line["job_id"], line["item_index"]]).text
        assert re.fullmatch(output_regex(FEEDBACK_CHARS), line["completion"])
    printed = capsys.readouterr().out
    assert f"{len(exported)} items exported" in printed and "request_not_found: 1" in printed
    assert "erased jobs not checked" in printed
    assert {line["target_source"] for line in exported} == {"teacher", "model_feedback_confirmed"}
