"""`texteval agreement`: the figures against a reference implementation, on a shipped fixture.

tests/data/agreement_{results,corrections,requests}.jsonl: two jobs of the 20
sample items graded by two models (one in the fine-tune's prompt format with
`confidence`, one in another format without it), a duplicate result, an
error result that was corrected, an item corrected twice, and a correction
of a job whose results were not read.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from sklearn.metrics import cohen_kappa_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from consumer.contract import EvaluationResult
from consumer.corrections import latest_by_item
from consumer.settings import Settings
from consumer.tools.agreement import agreement, confusion_matrix, quadratic_weighted_kappa, render
from consumer.tools.cli import main
from consumer.tools.files import write_results
from consumer.tools.loop_sources import load_corrections, load_request_items, load_results

DATA = Path(__file__).resolve().parent.parent / "data"
RESULTS, CORRECTIONS, REQUESTS = (DATA / f"agreement_{name}.jsonl" for name in ("results", "corrections", "requests"))
FINETUNE = "carlosvillu/gemma2-9b-teacher-eval-nota-feedback"
STANDIN = "gemma3-270m (stand-in)"


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def reference_pairs() -> dict[str, list[tuple[int, int, float | None]]]:
    """model -> (model nota, teacher nota, confidence), joined here without the code under test."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for c in lines(CORRECTIONS):  # the one applied last counts (contract 1.3): the last line
        latest[c["job_id"], c["item_index"]] = c
    results = {(r["job_id"], r["item_index"]): r for r in lines(RESULTS)}
    pairs: dict[str, list[tuple[int, int, float | None]]] = defaultdict(list)
    for key, c in latest.items():
        r = results.get(key)
        if r is not None and r["status"] == "ok":
            pairs[r["model"]].append((r["nota"], c["nota"], r.get("confidence")))
    return pairs


async def report_from(results: Path, with_requests: bool = True) -> dict[str, Any]:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    corrections = latest_by_item((await load_corrections(settings, str(CORRECTIONS))).values)
    graded = (await load_results(settings, str(results))).values
    items = (await load_request_items(settings, str(REQUESTS), corrections.keys())).values if with_requests else None
    return agreement(graded, corrections, items).as_dict()


async def test_kappa_agreement_and_confusion_match_scikit_learn_on_the_fixture() -> None:
    report = await report_from(RESULTS)
    groups = {g["model"]: g for g in report["groups"]}
    reference = reference_pairs()
    assert set(groups) == set(reference) == {FINETUNE, STANDIN}
    for model, pairs in reference.items():
        figures = groups[model]
        model_notas = [m for m, _, _ in pairs]
        teacher_notas = [t for _, t, _ in pairs]
        assert figures["n"] == len(pairs) > 10
        expected_kappa = cohen_kappa_score(model_notas, teacher_notas, weights="quadratic", labels=list(range(6)))
        assert figures["quadratic_weighted_kappa"] == pytest.approx(expected_kappa, abs=1e-12)
        assert figures["confusion_matrix"] == sk_confusion_matrix(model_notas, teacher_notas, labels=range(6)).tolist()
        assert figures["exact_agreement"] == pytest.approx(sum(m == t for m, t, _ in pairs) / len(pairs))
        assert figures["within_one_agreement"] == pytest.approx(sum(abs(m - t) <= 1 for m, t, _ in pairs) / len(pairs))
    # The fixture's models disagree differently: the figures are not one group's copied twice.
    assert groups[FINETUNE]["quadratic_weighted_kappa"] != groups[STANDIN]["quadratic_weighted_kappa"]


async def test_the_latest_correction_counts_and_the_unjoinable_ones_are_counted_apart() -> None:
    report = await report_from(RESULTS)
    corrections = lines(CORRECTIONS)
    twice = [c for c in corrections if (c["job_id"], c["item_index"]) == ("school-1/term-1/a", 7)]
    assert len(twice) == 2 and twice[0]["nota"] != twice[1]["nota"]
    assert report["corrections"] == len(corrections) - 2  # both items corrected twice count once
    assert report["of_error_results"] == 1  # item 19 of job a is an error result
    assert report["without_result"] == 1  # job c has no results in the file
    assert sum(g["n"] for g in report["groups"]) == report["corrections"] - 2


async def test_confidence_bands_and_prompt_formats() -> None:
    groups = {g["model"]: g for g in (await report_from(RESULTS))["groups"]}
    finetune, standin = groups[FINETUNE], groups[STANDIN]
    # Results carrying no `confidence` (written before contract 1.2) are one "unknown" band.
    assert standin["by_confidence"] == {"unknown": {"n": standin["n"], "exact_agreement": standin["exact_agreement"]}}
    bands = finetune["by_confidence"]
    assert "unknown" not in bands and sum(b["n"] for b in bands.values()) == finetune["n"]
    reference = [(m, t, c) for m, t, c in reference_pairs()[FINETUNE] if c is not None and c >= 0.9]
    assert bands["0.9-1.0"]["n"] == len(reference)
    # The fixture's low confidences sit where the model missed, as they should in a useful model.
    assert bands["0.0-0.5"]["exact_agreement"] < bands["0.7-0.9"]["exact_agreement"]
    # Its prompt hashes are the fine-tune format's; the stand-in's are not.
    assert (finetune["prompt_format"], standin["prompt_format"]) == ("gemma_finetune", "other")
    without = {g["model"]: g["prompt_format"] for g in (await report_from(RESULTS, with_requests=False))["groups"]}
    assert without == {FINETUNE: "unknown", STANDIN: "unknown"}


async def test_a_csv_results_file_gives_the_same_grades(tmp_path: Path) -> None:
    csv_path = tmp_path / "results.csv"
    write_results([EvaluationResult.model_validate(r) for r in lines(RESULTS)], csv_path)
    from_csv = {g["model"]: g for g in (await report_from(csv_path))["groups"]}
    from_jsonl = {g["model"]: g for g in (await report_from(RESULTS))["groups"]}
    for model, figures in from_jsonl.items():
        for name in ("n", "quadratic_weighted_kappa", "confusion_matrix", "prompt_format"):
            assert from_csv[model][name] == figures[name]


def test_kappa_edge_cases() -> None:
    assert quadratic_weighted_kappa(confusion_matrix([])) is None
    # Everyone gave 3 to everything: chance agreement is total, kappa undefined (not 1, not a crash).
    assert quadratic_weighted_kappa(confusion_matrix([(3, 3)] * 5)) is None
    assert quadratic_weighted_kappa(confusion_matrix([(0, 0), (5, 5), (2, 2)])) == pytest.approx(1.0)
    # The worst case: every grade mirrored across the scale.
    mirrored = [(g, 5 - g) for g in range(6)]
    assert quadratic_weighted_kappa(confusion_matrix(mirrored)) == pytest.approx(
        cohen_kappa_score([m for m, _ in mirrored], [t for _, t in mirrored], weights="quadratic")
    )


def test_the_command_prints_every_figure_per_model(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["agreement", "--results", str(RESULTS), "--corrections", str(CORRECTIONS), "--requests", str(REQUESTS),
            "--erased", "none"]  # fmt: skip
    assert main([*args, "--json"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert {g["model"] for g in printed["groups"]} == {FINETUNE, STANDIN}
    # Not looking for erased jobs is said, in the figures and on stderr (tests/tools/test_erased_skip.py looks).
    assert printed["erased_skipped"] == {"checked": False, "jobs": 0, "items": 0}
    assert "erased jobs not checked (--erased none)" in captured.err
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "erased jobs not checked" in text
    for shown in (f"model {FINETUNE}, prompt format gemma_finetune", "quadratic weighted kappa", "model 5 ",
                  "0.9-1.0", "unknown", "1 of error results"):  # fmt: skip
        assert shown in text
    assert text.count("confusion (rows") == 2


def test_render_with_nothing_to_compare() -> None:
    assert "no corrected ok results" in render(agreement({}, {}))


def test_unreadable_sources_exit_2_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.jsonl"
    assert main(["agreement", "--results", str(missing), "--corrections", str(CORRECTIONS), "--erased", "none"]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    broken = tmp_path / "corrections.jsonl"
    broken.write_text('{"job_id": "s/j", "item_index": 0, "nota": 8}\n')
    assert main(["agreement", "--results", str(RESULTS), "--corrections", str(broken), "--erased", "none"]) == 2
    assert "line 1: nota: Input should be less than or equal to 5" in capsys.readouterr().err
    # A line dated in the future is an invalid line of the file (contract 1.3).
    broken.write_text('{"job_id": "s/j", "item_index": 0, "nota": 3, "corrected_at": "2999-01-01T00:00:00Z"}\n')
    assert main(["agreement", "--results", str(RESULTS), "--corrections", str(broken), "--erased", "none"]) == 2
    assert "line 1: corrected_at: lies more than a minute in the future" in capsys.readouterr().err
    # Files, but the erased jobs are read from Kafka by default: no broker, no figures.
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # nothing listens there
    assert main(["agreement", "--results", str(RESULTS), "--corrections", str(CORRECTIONS)]) == 2
    assert "cannot connect to 127.0.0.1:1" in capsys.readouterr().err
    assert main(["agreement"]) == 2
    assert "cannot connect to 127.0.0.1:1" in capsys.readouterr().err


def test_without_a_decisions_topic_the_command_stops_and_says_how_to_go_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import consumer.kafka
    import consumer.tools.loop_sources

    async def connected(*_: object, **__: object) -> None:
        return None

    async def no_topic(*_: object, **__: object) -> None:
        raise LookupError("topic evaluation.decisions does not exist")

    monkeypatch.setattr(consumer.kafka, "check_connection", connected)
    monkeypatch.setattr(consumer.tools.loop_sources, "load_erased_jobs", no_topic)
    assert main(["agreement", "--results", str(RESULTS), "--corrections", str(CORRECTIONS)]) == 2
    err = capsys.readouterr().err
    assert "topic evaluation.decisions does not exist: erased jobs cannot be checked" in err and "--erased none" in err
