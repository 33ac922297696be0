"""The gateway's page in a real browser: headless Chromium from the
distribution's packages, driven by playwright (never ``playwright install``:
its own browser download is not used). Skipped, saying so, where
/usr/bin/chromium is absent (``.ci/run`` installs it).

Waits are arrow functions, not expressions: the page's CSP allows no eval,
and Playwright evaluates a predicate given as an expression with eval.

The page is driven as a teacher would: paste a CSV, submit, watch the grades
arrive through EventSource; mid-stream the gateway is restarted (the browser
reconnects by itself with Last-Event-ID) and the page also reconnects by
hand; every result must arrive once, in id order, with nothing missing.

Issue 22 (contract 1.2) as a teacher meets it: the rows to review marked,
sorted least sure first, each answer beside its grade, the class's chart,
and a grade corrected in place reaching the corrections topic.
"""

from __future__ import annotations

import csv
import io
import json
import os
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from consumer.engine.fake import FakeEngine
from consumer.gateway.server import gateway_serving
from consumer.testing.topics import at_least, create_topics, make_settings, read_until, running
from tests.helpers import SettingsFactory
from tests.kafka_harness import TopicNames

if TYPE_CHECKING:
    from consumer.kafka import Record

CHROMIUM = Path(os.environ.get("TEXTEVAL_CHROMIUM", "/usr/bin/chromium"))

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.process,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}: apt-get install chromium"),
]

N_ITEMS = 40


def sample_csv(n: int) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id_alumno", "curso", "consigna", "respuesta"])
    for i in range(n):
        # Commas, quotes and a newline inside a field: the page's CSV parser must keep them.
        writer.writerow([f"A{i:03d}", "3r ESO", "Explica, breument, la fotosíntesi.",
                         f'Diu "la llum"\nproduce oxigen ({i})'])  # fmt: skip
    return buffer.getvalue()


TENANT_KEY = "browser-school-key-" + "t" * 32


@pytest.mark.parametrize("key", [None, TENANT_KEY], ids=["open", "tenant-key"])
async def test_the_page_submits_shows_every_grade_and_survives_reconnects(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames, key: str | None
) -> None:
    """With a tenant's key the stream URL carries a stream token, which the
    restarted gateway (same keys) must honour when the browser reconnects."""
    from playwright.async_api import async_playwright

    control = topic_names.requests.replace(".requests", ".control")
    keys = {"GATEWAY_API_KEYS": f"school-9={key}"} if key else {}
    settings = settings_for(KAFKA_CONTROL_TOPIC=control,
                             BATCH_SIZE=2, **keys)  # fmt: skip
    await create_topics(kafka_bootstrap, settings.service_topics())
    # One item at a time, 0.1 s each: a job of ~4 s to reconnect in the middle of.
    engine = FakeEngine(delay_s=0.1, max_concurrency=1)
    async with running(settings, engine), async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            async with AsyncExitStack() as first:
                _, base = await first.enter_async_context(gateway_serving(settings))
                port = int(base.rsplit(":", 1)[1])
                await page.goto(base + "/")
                if key:
                    await page.fill("#key", key)
                await page.fill("#csv", sample_csv(N_ITEMS))
                await page.click("#submit")
                await page.wait_for_function("() => window.texteval.itemIndexes.length >= 6", timeout=30_000)
                at_restart: int = await page.evaluate("window.texteval.itemIndexes.length")
            # The gateway went away mid-stream; a new one on the same port
            # knows the job only from the progress topic.
            async with gateway_serving(settings, port=port):
                await page.wait_for_function("() => window.texteval.itemIndexes.length >= 20", timeout=30_000)
                await page.evaluate("window.texteval.reconnect()")  # and once by hand, from the last id
                await page.wait_for_function("() => window.texteval.done", timeout=60_000)
                state: dict[str, Any] = await page.evaluate(
                    "({ids: window.texteval.eventIds, indexes: window.texteval.itemIndexes,"
                    " events: window.texteval.events, errors: window.texteval.errors,"
                    " rows: document.querySelectorAll('#results tr').length,"
                    " status: document.getElementById('status').textContent})"
                )
                downloaded = await page.evaluate(
                    "fetch(document.getElementById('download-jsonl').href).then(r => r.text())"
                )
        finally:
            await browser.close()
    assert at_restart < 20  # so the browser's own reconnect brought results before the manual one
    ids = [int(i) for i in state["ids"]]
    assert ids == sorted(set(ids)), "the page saw an event twice or out of order"
    assert sorted(state["indexes"]) == list(range(N_ITEMS)) and len(state["indexes"]) == N_ITEMS
    assert state["events"][0] == "accepted" and state["events"][-1] == "complete"
    assert state["rows"] == N_ITEMS and state["status"].startswith("complete")
    assert not state["errors"] and not errors
    rows = [json.loads(line) for line in downloaded.splitlines()]
    assert [r["item_index"] for r in rows] == list(range(N_ITEMS))
    assert {r["id_alumno"] for r in rows} == {f"A{i:03d}" for i in range(N_ITEMS)}
    assert rows[0]["job_id"].startswith("school-9/") if key else "/" not in rows[0]["job_id"]


async def test_the_page_sends_the_api_key_and_shows_refusals(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames
) -> None:
    from playwright.async_api import async_playwright

    control = topic_names.requests.replace(".requests", ".control")
    key = "page-key-5q" + "k" * 32
    settings = settings_for(KAFKA_CONTROL_TOPIC=control,
                             GATEWAY_API_KEYS=f"school-5={key}")  # fmt: skip
    await create_topics(kafka_bootstrap, settings.service_topics())
    async with (
        running(settings, FakeEngine(delay_s=0.01)),
        gateway_serving(settings) as (_, base),
        async_playwright() as pw,
    ):
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        try:
            page = await browser.new_page()
            urls: list[str] = []
            page.on("request", lambda request: urls.append(request.url))
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            opened = await page.goto(base + "/")  # the page itself needs no key
            assert opened is not None
            page_headers = await opened.all_headers()
            await page.fill("#csv", sample_csv(5))
            await page.click("#submit")
            await page.wait_for_function("() => document.getElementById('status').textContent.startsWith('401')")
            refused = await page.text_content("#status")
            await page.fill("#key", key)
            await page.click("#submit")
            await page.wait_for_function("() => window.texteval.done", timeout=30_000)
            indexes = await page.evaluate("window.texteval.itemIndexes")
            job_id = await page.evaluate("window.texteval.jobId")
            link = await page.evaluate("document.getElementById('download-csv').href")
            downloaded = await page.evaluate("fetch(document.getElementById('download-csv').href).then(r => r.text())")
            framed = await page.evaluate("fetch('/jobs').then(r => r.status)")  # the key is never in page JS state
        finally:
            await browser.close()
    assert refused is not None and "API key" in refused
    assert sorted(indexes) == list(range(5)) and job_id.startswith("school-5/")
    assert len(downloaded.strip().splitlines()) == 6  # the download link carries a stream token
    assert "token=" in link and key not in link
    assert not [u for u in urls if key in u], "the key travelled in a URL"
    assert [u for u in urls if "/stream/" in u and "token=" in u]
    # The page's own headers, as the browser got them; its inline script ran under that CSP.
    csp = page_headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "frame-ancestors 'none'" in csp
    assert page_headers["x-frame-options"] == "DENY" and page_headers["x-content-type-options"] == "nosniff"
    assert page_headers["referrer-policy"] == "no-referrer"
    assert not [m for m in console if "Content Security Policy" in m], console
    assert framed == 401


def rows_js() -> str:
    """The table as the teacher sees it, row by row in page order."""
    return (
        "Array.from(document.querySelectorAll('#results tr')).map(tr => ({"
        " index: Number(tr.dataset.index), review: tr.classList.contains('review'),"
        " badge: !!tr.querySelector('.badge'), nota: tr.querySelector('.nota').textContent,"
        " answer: tr.querySelector('.answer').textContent}))"
    )


CHART_JS = (
    "Array.from(document.querySelectorAll('#chart rect')).map(r => ({grade: Number(r.dataset.grade),"
    " count: Number(r.dataset.count), height: Number(r.getAttribute('height'))}))"
)


@dataclass
class Seen:
    """What the page showed a teacher of one job, and what reached the topics."""

    job_id: str
    results: dict[int, dict[str, Any]]  # the gateway's JSONL, by item_index
    table: str  # the gateway's CSV
    status: str
    review_count: str
    in_order: list[dict[str, Any]]
    by_confidence: list[dict[str, Any]]
    back: list[int]
    chart: list[dict[str, int]]
    chart_after: list[dict[str, int]]
    target: int
    corrected: int
    refused: str
    after: list[dict[str, Any]]
    records: list[Record]
    problems: list[str]  # page errors and CSP reports


N_TEACHER = 24


async def teacher_session(kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames) -> Seen:
    """A teacher's session: submit, read, sort, correct the least sure grade
    (first refused: a mistyped key; then saved)."""
    from playwright.async_api import async_playwright

    key = "page-teacher-key-" + "r" * 32
    settings = make_settings(
        kafka_bootstrap, topic_names, kafka_group_kwargs,
        KAFKA_CONTROL_TOPIC=topic_names.requests.replace(".requests", ".control"),
        KAFKA_CORRECTIONS_TOPIC=topic_names.requests.replace(".requests", ".corrections"),
        GATEWAY_API_KEYS=f"school-3={key}",
    )  # fmt: skip
    await create_topics(kafka_bootstrap, settings.service_topics())
    # The fake's confidences spread over 0.45..0.98: with 0.75 some rows are to review, not all.
    async with (
        running(settings, FakeEngine(delay_s=0.01, review_below=0.75)),
        gateway_serving(settings) as (_, base),
        async_playwright() as pw,
    ):
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        try:
            page = await browser.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
            await page.goto(base + "/")
            await page.fill("#key", key)
            await page.fill("#csv", sample_csv(N_TEACHER))
            await page.click("#submit")
            await page.wait_for_function("() => window.texteval.done", timeout=60_000)
            job_id: str = await page.evaluate("window.texteval.jobId")
            status = await page.text_content("#status") or ""
            review_count = await page.text_content("#review-count") or ""
            downloaded = await page.evaluate(
                "fetch(document.getElementById('download-jsonl').href).then(r => r.text())"
            )
            table = await page.evaluate("fetch(document.getElementById('download-csv').href).then(r => r.text())")
            results = {r["item_index"]: r for r in map(json.loads, downloaded.splitlines())}
            in_order: list[dict[str, Any]] = await page.evaluate(rows_js())
            await page.click("#sort")
            by_confidence: list[dict[str, Any]] = await page.evaluate(rows_js())
            chart: list[dict[str, int]] = await page.evaluate(CHART_JS)

            target = by_confidence[0]["index"]
            row = f'#results tr[data-index="{target}"]'
            await page.click(f"{row} button.correct")
            await page.fill("#key", "mistyped-" + key)
            await page.select_option(f"{row} .edit-nota", "0")
            await page.click(f"{row} .save")
            await page.wait_for_function(
                "(row) => document.querySelector(row + ' .outcome').textContent.startsWith('not saved')", arg=row
            )
            refused = await page.text_content(f"{row} .outcome") or ""
            await page.fill("#key", key)
            corrected = (results[target]["nota"] + 1) % 6
            await page.select_option(f"{row} .edit-nota", str(corrected))
            await page.fill(f"{row} .edit-feedback", "Cal explicar la clorofil·la.")
            await page.fill(f"{row} .edit-comment", "revisat a classe")
            await page.click(f"{row} .save")
            await page.wait_for_function(
                "(row) => document.querySelector(row + ' .outcome').textContent === 'saved'", arg=row
            )
            after: list[dict[str, Any]] = await page.evaluate(rows_js())
            chart_after: list[dict[str, int]] = await page.evaluate(CHART_JS)
            await page.click("#sort")
            back: list[int] = [r["index"] for r in await page.evaluate(rows_js())]
        finally:
            await browser.close()
        records = await read_until(kafka_bootstrap, settings.kafka.corrections_topic, at_least(1))
    return Seen(
        job_id=job_id, results=results, table=table, status=status, review_count=review_count, in_order=in_order,
        by_confidence=by_confidence, back=back, chart=chart, chart_after=chart_after, target=target,
        corrected=corrected, refused=refused, after=after, records=records, problems=problems,
    )  # fmt: skip


async def test_the_page_shows_answers_charts_grades_and_a_teachers_correction_reaches_the_topic(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames
) -> None:
    """Issue 22, item 2: the answer each grade was given for sits beside it
    (from the file the page submitted), the chart counts the class's grades,
    and a grade corrected in place is produced to the corrections topic once
    (a refused save says so and produces nothing)."""
    seen = await teacher_session(kafka_bootstrap, kafka_group_kwargs, topic_names)
    n, results, target = N_TEACHER, seen.results, seen.target
    assert not seen.problems, seen.problems
    assert sorted(results) == list(range(n))
    assert [r["index"] for r in seen.in_order] == list(range(n))
    # Beside each grade, the answer it was given for (quotes and newline kept).
    assert [r["answer"] for r in seen.in_order] == [f'Diu "la llum"\nproduce oxigen ({i})' for i in range(n)]
    # The chart: one bar per grade, the counts the results give, heights in proportion.
    counts = [sum(1 for r in results.values() if r["nota"] == g) for g in range(6)]
    assert [b["grade"] for b in seen.chart] == list(range(6)) and [b["count"] for b in seen.chart] == counts
    assert [b["height"] for b in seen.chart] == [round(100 * c / max(counts)) for c in counts]
    # The correction: refused without the key's right, shown; saved, shown, counted, produced once.
    assert seen.refused.startswith("not saved: 401")
    shown = next(r for r in seen.after if r["index"] == target)
    assert shown["nota"] == f"{seen.corrected} (model: {results[target]['nota']})"
    moved = list(counts)
    moved[results[target]["nota"]] -= 1
    moved[seen.corrected] += 1
    assert [b["count"] for b in seen.chart_after] == moved
    (record,) = seen.records
    assert record.key == seen.job_id.encode() and seen.job_id.startswith("school-3/")
    produced = json.loads(record.value or b"{}")
    assert (produced["job_id"], produced["item_index"], produced["nota"]) == (seen.job_id, target, seen.corrected)
    assert produced["feedback"] == "Cal explicar la clorofil·la." and produced["comment"] == "revisat a classe"
    assert seen.back == list(range(n))  # the sort toggles back to item order


async def test_the_page_marks_the_rows_to_review_and_sorts_the_least_sure_first(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames
) -> None:
    """Issue 22, item 2: the rows marked are exactly those the results flag
    (some, not all), the count is the complete event's, sorting puts the
    least sure first, and the download links' files carry the fields."""
    seen = await teacher_session(kafka_bootstrap, kafka_group_kwargs, topic_names)
    n, results = N_TEACHER, seen.results
    assert not seen.problems, seen.problems
    flagged = {i for i, r in results.items() if r.get("needs_review")}
    assert 0 < len(flagged) < n
    assert {r["index"] for r in seen.in_order if r["review"]} == flagged
    assert {r["index"] for r in seen.in_order if r["badge"]} == flagged
    assert seen.review_count == f"{len(flagged)} of {n} to review"
    assert seen.status.endswith(f", {len(flagged)} to review")  # the complete event's count
    order = [r["index"] for r in seen.by_confidence]
    assert sorted(order) == list(range(n)) and order != list(range(n))
    confidences = [results[i]["confidence"] for i in order]
    assert confidences == sorted(confidences)
    # The distribution in JSONL; confidence and the flag in the CSV, as JSON spells them.
    assert all(len(r["nota_probabilities"]) == 6 for r in results.values())
    csv_rows = {int(r["item_index"]): r for r in csv.DictReader(io.StringIO(seen.table.removeprefix("\ufeff")))}
    assert {i: (float(r["confidence"]), r["needs_review"]) for i, r in csv_rows.items()} == {
        i: (r["confidence"], "true" if r["needs_review"] else "false") for i, r in results.items()
    }
