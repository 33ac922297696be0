"""Issue 30, "nothing lost on the way in": the page reads what teachers have
(Excel's CSV in Catalan/Spanish settings, cells pasted from a spreadsheet,
Windows-1252, BOMs, Catalan/Spanish/English headers) and, before anything
is sent, shows how many students it read or each row it could not read,
with the reason in Catalan. Every file here is either read with every
student in it or refused with a reason; no request leaves the page until
the teacher confirms the preview (Submit), and a double click sends one job.

Headless Chromium from the distribution, driven by playwright, against a
real broker, gateway and consumer (fake engine), as
tests/gateway/test_gateway_browser.py.
"""

from __future__ import annotations

import asyncio
import codecs
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import xlsxwriter
from playwright.async_api import async_playwright

from consumer.engine.fake import FakeEngine
from consumer.gateway.server import gateway_serving
from consumer.testing.topics import create_topics, running
from tests.helpers import SettingsFactory
from tests.kafka_harness import TopicNames

if TYPE_CHECKING:
    from playwright.async_api import FilePayload

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

Q = "Explica què és la fotosíntesi."
ANSWERS = [
    "La fotosíntesi és com les plantes fan menjar amb la llum.",
    "Les plantes agafen diòxid de carboni, i fan oxigen; també glucosa.",
    'Diu "la llum" i la clorofil·la.',
    "No ho sé",
    "Les fulles són verdes per la clorofil·la.",
]


def rows(sep: str, header: list[str], ids: list[str] | None = None, answers: list[str] | None = None) -> str:
    def cell(v: str) -> str:
        return '"' + v.replace('"', '""') + '"' if any(c in v for c in (sep, '"', "\n")) else v

    ids = ids or [f"A{i:03d}" for i in range(1, 6)]
    answers = answers or ANSWERS
    lines = [sep.join(header)] + [
        sep.join(cell(v) for v in (i, "3r ESO", Q, a)) for i, a in zip(ids, answers, strict=True)
    ]
    return "\r\n".join(lines) + "\r\n"


CA = ["id_alumno", "curs", "consigna", "resposta"]


@dataclass
class Case:
    name: str
    data: bytes
    students: int  # read with every student (0: refused)
    reason: str = ""  # refused: a piece of the Catalan reason shown
    check: str = ""  # read: a text one answer must hold exactly (accents survived)


MULTILINE = 'Primer la llum;\n després "l\'aigua"\tarriba.'


def workbook() -> bytes:
    """A real Excel workbook (xlsxwriter, as exports.py writes them): a Catalan header, a numeric id,
    an answer with accents, a line break, a quote and a tab, and an empty row in the middle."""
    buffer = io.BytesIO()
    book = xlsxwriter.Workbook(buffer, {"in_memory": True})
    sheet = book.add_worksheet("Respostes")
    sheet.write_row(0, 0, ["Alumne", "Curs", "Consigna", "Resposta"])
    answers = [ANSWERS[0], MULTILINE, *ANSWERS[2:]]
    rows_at = [1, 2, 4, 5, 6]  # the sheet's row 4 left empty
    for n, (at, answer) in enumerate(zip(rows_at, answers, strict=True), start=1):
        if n == 1:
            sheet.write_number(at, 0, 1001)  # an id typed as a number
        else:
            sheet.write_string(at, 0, f"A{n:03d}")
        sheet.write_row(at, 1, ["3r ESO", Q, answer])
    book.close()
    return buffer.getvalue()


def cases() -> list[Case]:
    swallow = (
        "id_alumno,curso,consigna,respuesta\r\n"
        "A001,3r ESO,Explica,Bé\r\n"
        'A002,3r ESO,Explica,"Diu que la llum\r\n'
        "A003,3r ESO,Explica,La planta\r\n"
        "A004,3r ESO,Explica,Fa oxigen\r\n"
        'A005,3r ESO,Explica,Acaba aquí"\r\n'
    )
    unclosed = (
        "id_alumno,curso,consigna,respuesta\r\n"
        "A001,3r ESO,Explica,Bé\r\n"
        'A002,3r ESO,Explica,"Comença i no acaba\r\n'
        "A003,3r ESO,Explica,Res\r\n"
        "A004,3r ESO,Explica,Més\r\n"
    )
    return [
        Case("excel-ca-semicolon-bom.csv", ("\ufeff" + rows(";", CA)).encode(), 5),
        Case("pasted-tabs-english.tsv", rows("\t", ["student", "course", "question", "answer"]).encode(), 5),
        Case("spanish-headers.csv", rows(",", ["Alumno", "Curso", "Pregunta", "Respuesta"]).encode(), 5),
        Case("latin1-excel.csv", rows(";", CA).encode("cp1252"), 5, check=ANSWERS[0]),
        Case("utf16-unicode-text.txt", codecs.BOM_UTF16_LE + rows("\t", CA).encode("utf-16-le"), 5, check=ANSWERS[2]),
        Case(
            "empty-rows.csv",
            (rows(";", CA).replace("\r\nA003", "\r\n;;;\r\n\r\nA003") + ";;;\r\n;;;\r\n").encode(),
            5,
        ),
        Case(
            "formula-cells.csv",
            rows(
                ";",
                CA,
                ids=["=A001", "+A002", "@A003", "-A004", "A005"],
                answers=[*ANSWERS[:4], '=HYPERLINK("http://x";"clic")'],
            ).encode(),
            5,
        ),
        Case("quote-swallows-three.csv", swallow.encode(), 0, reason="s'empassa 3 files"),
        Case("unclosed-quote.csv", unclosed.encode(), 0, reason="no es tanquen mai"),
        Case(
            "missing-course.csv",
            "id_alumno;consigna;resposta\r\nA001;Explica;Bé\r\n".encode(),
            0,
            reason="Falta la columna «curs»",
        ),
        Case(
            "duplicated-ids.csv",
            rows(";", CA, ids=["A001", "A002", "A001", "A004", "A005"]).encode(),
            0,
            reason="ja surt a la fila 2",
        ),
        Case(
            "empty-answer.csv",
            rows(";", CA, answers=[*ANSWERS[:4], " "]).encode(),
            0,
            reason="la columna «resposta» és buida",
        ),
        Case(
            "google-forms.csv",
            (
                "Marca de temps,Adreça electrònica,Nom i cognoms,Grup,"
                "Explica què és la fotosíntesi.,Per què les fulles són verdes?\r\n"
                "2026/12/01 10:00,a@escola.cat,Anna Puig,3r ESO B,Amb la llum.,Per la clorofil·la.\r\n"
                '2026/12/01 10:02,b@escola.cat,Biel Soler,3r ESO B,"Fa glucosa, i oxigen.",Perquè sí.\r\n'
                "2026/12/01 10:05,c@escola.cat,Carla Vidal,3r ESO B,No ho sé,Verd.\r\n"
            ).encode(),
            6,
            check="Fa glucosa, i oxigen.",
        ),
        Case(
            "too-many.csv",
            rows(";", CA, ids=[f"A{i}" for i in range(2001)], answers=["Text"] * 2001).encode(),
            0,
            reason="Massa respostes: 2001 (com a molt 2000 per feina)",
        ),
        Case("excel-workbook.xlsx", workbook(), 5, check=MULTILINE),
        Case("notes.xlsx", b"PK\x03\x04" + bytes(200), 0, reason="no es pot llegir (.xls, .ods o un .xlsx malmès)"),
        Case(
            "unquoted-comma.csv",
            rows(",", ["id_alumno", "curso", "consigna", "respuesta"])
            .replace("Les fulles són verdes per la clorofil·la.", "Les fulles, verdes")
            .encode(),
            0,
            reason="té 5 cel·les i la capçalera 4",
        ),
    ]


def payload(case: Case) -> FilePayload:
    return {"name": case.name, "mimeType": "text/csv", "buffer": case.data}


PREVIEW_JS = (
    "({items: window.texteval.preview.items.length, problems: window.texteval.preview.problems.length,"
    " fatal: window.texteval.preview.fatal.length, encoding: window.texteval.preview.encoding,"
    " answers: window.texteval.preview.items.map(i => i.respuesta),"
    " ids: window.texteval.preview.items.map(i => i.id_alumno),"
    " shown: Array.from(document.querySelectorAll('#problems li')).map(li => li.textContent),"
    " summary: document.getElementById('preview-summary').textContent,"
    " note: document.getElementById('preview-note').hidden ? '' : document.getElementById('preview-note').textContent,"
    " columns: document.getElementById('preview-columns').textContent,"
    " submit: !document.getElementById('submit').disabled, label: document.getElementById('submit').textContent})"
)


async def test_every_file_is_read_whole_or_refused_in_catalan_and_nothing_leaves_before_submit(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames, tmp_path: Path
) -> None:
    shots = shots_dir(tmp_path)

    settings = settings_for(KAFKA_CONTROL_TOPIC=topic_names.requests.replace(".requests", ".control"), BATCH_SIZE=2)
    await create_topics(kafka_bootstrap, settings.service_topics())
    seen: dict[str, dict[str, Any]] = {}
    async with (
        running(settings, FakeEngine(delay_s=0.01)),
        gateway_serving(settings) as (_, base),
        async_playwright() as pw,
    ):
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        try:
            context = await browser.new_context(locale="ca-ES", viewport={"width": 1280, "height": 900})
            page = await context.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
            posts: list[str] = []
            page.on("request", lambda r: posts.append(r.url) if r.method == "POST" and "/evaluate" in r.url else None)
            await page.goto(base + "/")
            lang = await page.evaluate("document.documentElement.lang")
            for case in cases():
                await page.set_input_files("#file", files=[payload(case)])
                await page.wait_for_function("() => window.texteval.preview !== null")
                seen[case.name] = await page.evaluate(PREVIEW_JS)
                if case.name == "latin1-excel.csv":
                    await page.screenshot(path=str(shots / "page-preview-latin1-1280.png"))
                if case.name == "excel-workbook.xlsx":
                    await page.screenshot(path=str(shots / "page-preview-xlsx-1280.png"))
                if case.name == "quote-swallows-three.csv":
                    await page.screenshot(path=str(shots / "page-preview-refused-1280.png"))
                await page.evaluate("window.texteval.preview = null")
            # The template, downloaded and chosen back as it is: read whole.
            async with page.expect_download() as info:
                await page.click("#template")
            template = await info.value
            template_name = template.suggested_filename
            template_bytes = await asyncio.to_thread(Path(await template.path()).read_bytes)
            await page.set_input_files("#file", files=[payload(Case(template_name, template_bytes, 2))])
            await page.wait_for_function("() => window.texteval.preview !== null")  # the file is read asynchronously
            template_read = await page.evaluate(PREVIEW_JS)
            before_submit = list(posts)
            # The formula file, confirmed: a double click sends one job, and every student gets a grade.
            formula = next(c for c in cases() if c.name == "formula-cells.csv")
            await page.set_input_files("#file", files=[payload(formula)])
            await page.dblclick("#submit")
            await page.wait_for_function("() => window.texteval.done", timeout=60_000)
            graded = await page.evaluate("Array.from(window.texteval.results.values()).map(r => r.id_alumno)")
            merged: str = await page.evaluate("window.texteval.mergedCsv()")
            job_id = await page.evaluate("window.texteval.jobId")
        finally:
            await browser.close()
    assert lang == "ca" and not problems, problems
    assert template_name == "plantilla-texteval.csv" and template_bytes.startswith(
        b"\xef\xbb\xbfid_alumno;curs;consigna;resposta\r\n"
    )
    assert template_read["items"] == 2 and template_read["submit"]
    assert before_submit == [], "a request left the page before the preview was confirmed"
    assert len(posts) == 1, posts  # the double click sent one job
    for case in cases():
        got = seen[case.name]
        if case.students:
            assert (got["items"], got["problems"], got["fatal"]) == (case.students, 0, 0), (case.name, got)
            assert got["submit"] and got["label"] == f"Envia {case.students} respostes a avaluar", case.name
            assert got["summary"].startswith(f"Respostes llegides: {case.students}, de "), case.name
            if case.check:
                assert case.check in got["answers"], (case.name, got["answers"])
        else:
            assert not got["submit"] and got["label"] == "Envia a avaluar", (case.name, got)
            assert got["summary"].startswith("No es pot enviar"), (case.name, got["summary"])
            assert any(case.reason in text for text in got["shown"]), (case.name, got["shown"])
    assert seen["latin1-excel.csv"]["encoding"] == "cp1252" and "Windows-1252" in seen["latin1-excel.csv"]["note"]
    assert "fotosíntesi" in seen["latin1-excel.csv"]["note"]
    xlsx = seen["excel-workbook.xlsx"]  # the first sheet, cells as stored: a number id, the answer untouched
    assert xlsx["ids"] == ["1001", "A002", "A003", "A004", "A005"] and xlsx["encoding"] == "xlsx", xlsx
    assert "Llegit del primer full del llibre d'Excel" in xlsx["columns"] and "Separador" not in xlsx["columns"]
    assert MULTILINE in xlsx["answers"]
    assert seen["excel-ca-semicolon-bom.csv"]["ids"] == [f"A{i:03d}" for i in range(1, 6)]  # the BOM is not in the id
    assert seen["formula-cells.csv"]["ids"] == ["=A001", "+A002", "@A003", "-A004", "A005"]  # text, kept as typed
    assert sorted(graded) == sorted(["=A001", "+A002", "@A003", "-A004", "A005"]) and job_id.startswith(
        "formula-cells-"
    )
    lines = merged.split("\r\n")
    assert lines[0].startswith("id_alumno;curs;consigna;nota del model")
    assert {line.split(";")[0] for line in lines[1:] if line} == {"'=A001", "'+A002", "'@A003", "'-A004", "A005"}
