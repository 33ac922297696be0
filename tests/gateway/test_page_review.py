"""Issue 30 as a Catalan teacher meets the page after sending a file: review
like teachers do (question and course on each row, grouped by question, the
full answer on demand, the model's certainty, save-and-next with the
keyboard, focus kept, the teacher's feedback shown), the teacher's word in
the download, coming back later (a reload: the key from sessionStorage only,
the job reopened from the gateway with its corrections, the past jobs
listed), Cancel that confirms and says how many were left ungraded, a
language switch, and 390 px without a horizontal scroll. Screenshots at
1280 and 390 px go to docs/screenshots/.

Real broker, gateway (tenant key) and consumer (fake engine); headless
Chromium from the distribution, as tests/gateway/test_gateway_browser.py.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import zipfile
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from playwright.async_api import async_playwright

from consumer.engine.fake import FakeEngine
from consumer.gateway.server import gateway_serving
from consumer.testing.topics import at_least, create_topics, make_settings, read_until, running
from tests.kafka_harness import TopicNames

CHROMIUM = Path(os.environ.get("TEXTEVAL_CHROMIUM", "/usr/bin/chromium"))
# Screenshots go to docs/screenshots/ when asked (TEXTEVAL_SCREENSHOTS=1), else to the test's temporary folder.
DOCS_SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def shots_dir(tmp_path: Path) -> Path:
    return DOCS_SHOTS if os.environ.get("TEXTEVAL_SCREENSHOTS") else tmp_path


pytestmark = [
    pytest.mark.kafka,
    pytest.mark.process,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}: apt-get install chromium"),
]

QUESTIONS = ["Explica què és la fotosíntesi.", "Per què les fulles són verdes?"]
N_STUDENTS = 8
FEEDBACK = "Molt ben explicat; falta la clorofil·la."
LONG = " ".join(["La planta fa servir la llum del sol, l'aigua i el diòxid de carboni per fer glucosa."] * 6)


def class_csv() -> str:
    """Excel in Catalan: `;`, Catalan headers, two questions per student, some long answers."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=";")
    writer.writerow(["alumne", "curs", "consigna", "resposta"])
    for q, question in enumerate(QUESTIONS):
        for i in range(N_STUDENTS):
            answer = LONG if i % 3 == 0 else f"Resposta {i} a la pregunta {q + 1}: la clorofil·la."
            writer.writerow([f"A{i:03d}", "3r ESO B", question, answer])
    return buffer.getvalue()


def slow_csv(n: int) -> str:
    lines = [f"B{i:03d};4t ESO;{QUESTIONS[0]};Text {i}\n" for i in range(n)]
    return "id_alumno;curs;consigna;resposta\n" + "".join(lines)


def xlsx_rows(data: bytes) -> list[list[str]]:
    """The first sheet's rows as text, read from its XML; the zip's CRCs checked; no formula anywhere."""
    ns = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.testzip() is None
        assert {"[Content_Types].xml", "xl/workbook.xml", "xl/worksheets/sheet1.xml"} <= set(z.namelist())
        sheet = ElementTree.fromstring(z.read("xl/worksheets/sheet1.xml"))
    assert not list(sheet.iter(ns + "f"))
    rows = []
    for row in sheet.iter(ns + "row"):
        cells: dict[int, str] = {}
        for c in row.iter(ns + "c"):
            col = sum((ord(ch) - 64) * 26**i for i, ch in enumerate(reversed(re.sub(r"\d", "", c.get("r", "")))))
            text = (
                "".join(t.text or "" for t in c.iter(ns + "t")) if c.get("t") == "inlineStr" else c.findtext(ns + "v")
            )
            cells[col - 1] = text or ""
        rows.append([cells.get(i, "") for i in range(max(cells) + 1)])
    return rows


ROWS_JS = (
    "Array.from(document.querySelectorAll('#results tr')).map(tr => ({group: tr.classList.contains('group'),"
    " index: tr.dataset.index === undefined ? null : Number(tr.dataset.index), text: tr.textContent,"
    " nota: tr.querySelector('.nota') ? tr.querySelector('.nota').textContent : null,"
    " teacher: tr.querySelector('.teacher') ? tr.querySelector('.teacher').textContent : null}))"
)
FOCUS_JS = (
    "({cls: document.activeElement.className,"
    " row: document.activeElement.closest('tr') ? Number(document.activeElement.closest('tr').dataset.index) : null})"
)


async def test_a_teacher_reviews_corrects_downloads_reloads_and_cancels(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames, tmp_path: Path
) -> None:
    shots = shots_dir(tmp_path)

    key = "page-review-key-" + "q" * 32
    settings = make_settings(
        kafka_bootstrap, topic_names, kafka_group_kwargs,
        KAFKA_CONTROL_TOPIC=topic_names.requests.replace(".requests", ".control"),
        KAFKA_CORRECTIONS_TOPIC=topic_names.requests.replace(".requests", ".corrections"),
        GATEWAY_API_KEYS=f"school-8={key}", BATCH_SIZE=2,
    )  # fmt: skip
    await create_topics(kafka_bootstrap, settings.service_topics())
    n = N_STUDENTS * len(QUESTIONS)
    seen: dict[str, Any] = {}
    async with (
        running(settings, FakeEngine(delay_s=0.05, max_concurrency=1, review_below=0.75)),
        gateway_serving(settings) as (_, base),
        async_playwright() as pw,
    ):
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        try:
            context = await browser.new_context(locale="ca-ES", viewport={"width": 1280, "height": 1000})
            page = await context.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
            urls: list[str] = []
            page.on("request", lambda r: urls.append(r.url))
            await page.goto(base + "/")
            await page.fill("#key", key)
            await page.fill("#csv", class_csv())
            await page.click("#submit")
            await page.wait_for_function("() => window.texteval.done", timeout=60_000)
            job_id: str = await page.evaluate("window.texteval.jobId")
            seen["status"] = await page.text_content("#status")
            seen["first_row"] = await page.text_content('#results tr[data-index="1"]')
            # Contract 1.3: each row's review reasons, in the teacher's words, on the rows to review.
            seen["reasons"] = await page.evaluate(
                """() => Array.from(document.querySelectorAll('#results li[data-reason]')).map(li => ({
                    reason: li.dataset.reason, text: li.textContent,
                    review: li.closest('tr').classList.contains('review')}))"""
            )
            # The full answer on demand.
            seen["clipped"] = await page.evaluate("document.querySelector('#answer-0').clientHeight")
            await page.click('#results tr[data-index="0"] button.more')
            seen["full"] = await page.evaluate("document.querySelector('#answer-0').clientHeight")
            await page.click('#results tr[data-index="0"] button.more')
            # Grouped by question: one header row per question, each followed by its answers.
            await page.click("#group")
            seen["grouped"] = await page.evaluate(ROWS_JS)
            await page.screenshot(path=str(shots / "page-review-grouped-1280.png"))
            # Two corrections from the keyboard: Ctrl+Enter saves and opens the next row; Save keeps the focus.
            first = seen["grouped"][1]["index"]
            await page.click(f'#results tr[data-index="{first}"] button.correct')
            seen["focus_open"] = await page.evaluate(FOCUS_JS)
            await page.select_option(f'#results tr[data-index="{first}"] .edit-nota', "5")
            await page.fill(f'#results tr[data-index="{first}"] .edit-feedback', FEEDBACK)
            await page.fill(f'#results tr[data-index="{first}"] .edit-comment', "parlat a classe")
            await page.keyboard.press("Control+Enter")
            second = seen["grouped"][2]["index"]
            await page.wait_for_function(
                "(i) => document.activeElement.closest('tr')"
                " && document.activeElement.closest('tr').dataset.index === String(i)",
                arg=second,
            )
            seen["focus_next"] = await page.evaluate(FOCUS_JS)
            await page.select_option(f'#results tr[data-index="{second}"] .edit-nota', "0")
            await page.fill(f'#results tr[data-index="{second}"] .edit-feedback', "=No has respost la pregunta.")
            await page.click(f'#results tr[data-index="{second}"] .save')
            await page.wait_for_function(
                "(i) => document.querySelector('#results tr[data-index=\"' + i + '\"] .outcome')"
                ".textContent === 'Desat'",
                arg=second,
            )
            seen["focus_saved"] = await page.evaluate(FOCUS_JS)
            seen["after"] = await page.evaluate(ROWS_JS)
            await page.screenshot(path=str(shots / "page-review-corrected-1280.png"))
            # The teacher's word in the page's own download (the real button, the real file).
            async with page.expect_download() as info:
                await page.click("#download-merged")
            download = await info.value
            seen["download_name"] = download.suggested_filename
            seen["download"] = await asyncio.to_thread(Path(await download.path()).read_text, encoding="utf-8")
            async with page.expect_download() as info:
                await page.click("#download-merged-xlsx")
            xlsx = await info.value
            seen["xlsx_name"] = xlsx.suggested_filename
            seen["xlsx"] = await asyncio.to_thread(Path(await xlsx.path()).read_bytes)
            # 390 px: cards, no horizontal scroll, the correct button on screen.
            await page.set_viewport_size({"width": 390, "height": 844})
            seen["scroll_width"] = await page.evaluate("document.documentElement.scrollWidth")
            seen["wide"] = await page.evaluate(
                "Array.from(document.querySelectorAll('body *')).filter(e => e.getBoundingClientRect().right > 391)"
                ".map(e => e.tagName + '#' + e.id + '.' + e.className).slice(0, 10)"
            )
            box = await page.locator(f'#results tr[data-index="{first}"] button.correct').bounding_box()
            seen["button_right"] = box["x"] + box["width"] if box else 9999
            await page.screenshot(path=str(shots / "page-review-390.png"))
            await page.evaluate("window.scrollTo(0, 0)")
            await page.screenshot(path=str(shots / "page-top-390.png"))
            await page.locator(f'#results tr[data-index="{first}"]').scroll_into_view_if_needed()
            await page.screenshot(path=str(shots / "page-review-card-390.png"))
            await page.set_viewport_size({"width": 1280, "height": 1000})

            # Come back later: a reload keeps the key (this tab only), reopens the job with its corrections.
            await page.reload()
            await page.wait_for_function("(n) => window.texteval.done && window.texteval.results.size === n", arg=n,
                                         timeout=30_000)  # fmt: skip
            seen["key_after_reload"] = await page.input_value("#key")
            seen["reloaded"] = await page.evaluate(ROWS_JS)
            seen["unknown_note"] = await page.evaluate("!document.getElementById('unknown-note').hidden")
            await page.wait_for_selector("#jobs li")
            seen["jobs"] = await page.evaluate(
                "Array.from(document.querySelectorAll('#jobs li')).map(li => li.dataset.job)"
            )
            seen["local_storage"] = await page.evaluate("localStorage.length")
            seen["merged_after_reload"] = await page.evaluate("window.texteval.mergedCsv()")
            await page.evaluate("window.scrollTo(0, 0)")
            await page.screenshot(path=str(shots / "page-reopened-1280.png"))
            # The same file chosen again: the answers, questions and courses come back, nothing is sent.
            await page.fill("#csv", class_csv())
            seen["rechosen"] = await page.evaluate(
                "({note: document.getElementById('preview-note').textContent,"
                " disabled: document.getElementById('submit').disabled,"
                " answer: document.querySelector('#answer-0').textContent,"
                " unknown: !document.getElementById('unknown-note').hidden, total: window.texteval.total,"
                " size: window.texteval.results.size, known: window.texteval.itemsKnown, job: window.texteval.jobId,"
                " items: window.texteval.preview.items.length, pr: window.texteval.preview.problems.length})"
            )

            # Spanish from the switch: the lang attribute and every word follow.
            await page.select_option("#lang", "es")
            seen["lang_es"] = await page.evaluate("document.documentElement.lang")
            seen["status_es"] = await page.text_content("#status")
            seen["sort_es"] = await page.text_content("#sort")
            await page.select_option("#lang", "ca")

            # Cancel confirms, says how many are left ungraded, and the status says it again.
            dialogs: list[str] = []

            async def accept(dialog: Any) -> None:
                dialogs.append(dialog.message)
                await dialog.accept()

            page.on("dialog", accept)
            await page.fill("#csv", slow_csv(80))
            await page.click("#submit")
            await page.wait_for_function(
                "(j) => window.texteval.jobId !== j && window.texteval.results.size >= 4", arg=job_id, timeout=30_000
            )
            await page.click("#cancel")
            await page.wait_for_function("() => window.texteval.done", timeout=30_000)
            seen["cancel_status"] = await page.text_content("#status")
            seen["cancel_graded"] = await page.evaluate("window.texteval.results.size")
            seen["dialogs"] = dialogs
            await page.click("#jobs-refresh")
            await page.wait_for_function("() => document.querySelectorAll('#jobs li').length === 2")
            # Reopen the first job from the list.
            await page.click(f'#jobs li[data-job="{job_id}"] button.open-job')
            await page.wait_for_function("(j) => window.texteval.jobId === j && window.texteval.done", arg=job_id)
            seen["reopened_rows"] = await page.evaluate("window.texteval.results.size")
        finally:
            await browser.close()
        records = await read_until(kafka_bootstrap, settings.kafka.corrections_topic, at_least(2))

    assert not problems, problems
    assert job_id.startswith("school-8/")
    assert seen["status"].startswith(f"Acabada: {n} avaluats, 0 errors")
    # The row says who, which course and which question; the grade is worded as the model's certainty.
    assert "A001" in seen["first_row"] and "3r ESO B" in seen["first_row"] and QUESTIONS[0] in seen["first_row"]
    assert "certesa del model:" in seen["first_row"] and "%" in seen["first_row"]
    reasons = seen["reasons"]
    assert reasons and all(r["review"] for r in reasons)  # a row with a reason is a row to review
    words = {r["reason"]: r["text"] for r in reasons}
    assert words.get("low_confidence") == "el model no n'està segur d'aquesta nota"
    assert all(r["text"] != r["reason"] for r in reasons)  # words, never the code
    assert seen["full"] > seen["clipped"]
    groups = [r for r in seen["grouped"] if r["group"]]
    assert [g["text"].startswith(q) for g, q in zip(groups, QUESTIONS, strict=True)] == [True, True]
    order = [r["index"] for r in seen["grouped"] if not r["group"]]
    assert order == list(range(n)) and seen["grouped"][N_STUDENTS + 1]["group"]
    # Keyboard and focus.
    assert seen["focus_open"] == {"cls": "edit-nota", "row": first}
    assert seen["focus_next"] == {"cls": "edit-nota", "row": second}
    assert seen["focus_saved"]["cls"] == "correct" and seen["focus_saved"]["row"] == second
    after = {r["index"]: r for r in seen["after"] if not r["group"]}
    assert after[first]["nota"].startswith("5 (model: ") and after[second]["nota"].startswith("0 (model: ")
    assert "Retorn del docent: Molt ben explicat; falta la clorofil·la." in after[first]["teacher"]
    assert "Comentari: parlat a classe" in after[first]["teacher"]
    # Both corrections reached the topic, with the teacher's feedback.
    produced = sorted((r.value or b"").decode() for r in records)
    assert len(produced) == 2 and any("Molt ben explicat" in p for p in produced)
    # The download: `;`, BOM, the course and question, both corrections, the teacher's feedback, a final grade.
    assert seen["download_name"] == job_id.split("/")[-1] + "-resultats.csv"
    text = seen["download"]
    assert text.startswith("\ufeff")
    table = list(csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline=""), delimiter=";"))
    assert len(table) == n
    by_row = {int(r["núm. de fila"]): r for r in table}
    assert by_row[first]["nota del docent"] == "5" and by_row[first]["nota final"] == "5"
    assert by_row[first]["retorn del docent"] == "Molt ben explicat; falta la clorofil·la."
    assert by_row[first]["comentari del docent"] == "parlat a classe" and by_row[first]["curs"] == "3r ESO B"
    assert by_row[second]["nota final"] == "0"
    assert by_row[second]["retorn del docent"] == "'=No has respost la pregunta."  # formula-safe
    untouched = by_row[3]
    assert untouched["nota del docent"] == "" and untouched["nota final"] == untouched["nota del model"] != ""
    # The same in an .xlsx built by the page: a valid zip, every text an inline string, numbers as numbers.
    assert seen["xlsx_name"] == job_id.split("/")[-1] + "-resultats.xlsx"
    sheet = xlsx_rows(seen["xlsx"])
    assert sheet[0][:4] == ["id_alumno", "curs", "consigna", "nota del model"] and len(sheet) == n + 1
    xrow = next(r for r in sheet[1:] if r[-1] == str(first))
    assert xrow[7:11] == ["5", FEEDBACK, "parlat a classe", "5"]
    assert next(r for r in sheet[1:] if r[-1] == str(second))[8] == "=No has respost la pregunta."  # a string cell
    # 390 px.
    assert seen["scroll_width"] <= 390 and seen["button_right"] <= 390, seen["wide"]
    # After the reload: the key from this tab's sessionStorage, never localStorage or a URL; the corrections kept.
    assert seen["key_after_reload"] == key and seen["local_storage"] == 0
    assert not [u for u in urls if key in u]
    reloaded = {r["index"]: r for r in seen["reloaded"]}
    assert reloaded[first]["nota"].startswith("5 (model: ") and "Molt ben explicat" in reloaded[first]["teacher"]
    assert seen["unknown_note"] and "consigna desconeguda" in reloaded[0]["text"]
    assert seen["jobs"] == [job_id]
    assert f";5;{FEEDBACK};parlat a classe;5;" in seen["merged_after_reload"].replace('"', "")
    assert seen["rechosen"]["note"].startswith("Aquest fitxer és el de la feina oberta"), seen["rechosen"]
    assert seen["rechosen"]["disabled"] and seen["rechosen"]["answer"] == LONG and not seen["rechosen"]["unknown"]
    assert len([u for u in urls if u.endswith("/evaluate")]) == 2  # the class's job and the one cancelled
    # Spanish.
    assert seen["lang_es"] == "es" and seen["sort_es"] in ("Ordenar: menos seguras primero", "Ordenar por fila")
    assert "Abierto" in seen["status_es"] or "Terminado" in seen["status_es"] or "Trabajo" in seen["status_es"]
    # Cancel.
    (message,) = seen["dialogs"]
    assert "de 80 textos encara no tenen nota" in message
    graded = seen["cancel_graded"]
    assert 4 <= graded < 80
    assert seen["cancel_status"] == f"Aturada: {graded} avaluats, {80 - graded} sense avaluar (no tindran nota)"
    assert seen["reopened_rows"] == n
