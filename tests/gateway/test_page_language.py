"""Issue 30, "in Catalan": the page speaks the browser's language among
Catalan, Spanish and English (Catalan for any other), keeps a teacher's
switch for the tab, sets ``lang`` to match, and renders the gateway's own
refusals in the teacher's words (never "Field required").

Real broker, gateway (tenant key, a small item limit) and consumer (fake
engine); headless Chromium from the distribution.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import async_playwright

from consumer.engine.fake import FakeEngine
from consumer.gateway.server import gateway_serving
from consumer.testing.topics import create_topics, running
from tests.helpers import SettingsFactory
from tests.kafka_harness import TopicNames

CHROMIUM = Path(os.environ.get("TEXTEVAL_CHROMIUM", "/usr/bin/chromium"))

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.process,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}: apt-get install chromium"),
]

FIVE = "alumne;curs;consigna;resposta\n" + "".join(f"A{i};3r ESO;Explica la fotosíntesi.;Text {i}\n" for i in range(5))


async def test_the_page_speaks_the_teachers_language_and_words_the_gateways_refusals(
    kafka_bootstrap: str, settings_for: SettingsFactory, topic_names: TopicNames
) -> None:
    key = "page-language-key-" + "l" * 32
    settings = settings_for(KAFKA_CONTROL_TOPIC=topic_names.requests.replace(".requests", ".control"),
                             GATEWAY_API_KEYS=f"school-2={key}", MAX_ITEMS_PER_JOB=3)  # fmt: skip
    await create_topics(kafka_bootstrap, settings.service_topics())
    seen: dict[str, Any] = {}
    async with (
        running(settings, FakeEngine(delay_s=0.01)),
        gateway_serving(settings) as (_, base),
        async_playwright() as pw,
    ):
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        try:
            for locale in ("ca-ES", "es-ES", "en-GB", "fr-FR"):
                context = await browser.new_context(locale=locale)
                page = await context.new_page()
                await page.goto(base + "/")
                seen[locale] = await page.evaluate(
                    "[document.documentElement.lang, document.querySelector('h2').textContent,"
                    " document.getElementById('status').textContent]"
                )
                await context.close()
            context = await browser.new_context(locale="ca-ES")
            page = await context.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            await page.goto(base + "/")
            await page.fill("#csv", FIVE)
            await page.click("#submit")
            await page.wait_for_function("() => document.getElementById('status').textContent.startsWith('401')")
            seen["401"] = await page.text_content("#status")
            await page.fill("#key", key)
            await page.click("#submit")  # 5 items over a limit of 3: the gateway refuses
            await page.wait_for_function("() => /^4(13|22)/.test(document.getElementById('status').textContent)")
            seen["too_many"] = await page.text_content("#status")
            # The switch: Spanish for this tab, also after a reload, and the refusal worded again.
            await page.select_option("#lang", "es")
            seen["switched"] = await page.evaluate(
                "[document.documentElement.lang, document.getElementById('submit').textContent,"
                " document.getElementById('preview-summary').textContent,"
                " document.getElementById('status').textContent]"
            )
            await page.reload()
            seen["reloaded"] = await page.evaluate(
                "[document.documentElement.lang, sessionStorage.getItem('texteval.lang')]"
            )
            seen["local"] = await page.evaluate("localStorage.length")
        finally:
            await browser.close()
    assert not problems, problems
    assert seen["ca-ES"] == ["ca", "1. Les respostes dels alumnes", "A punt"]
    assert seen["es-ES"] == ["es", "1. Las respuestas del alumnado", "Listo"]
    assert seen["en-GB"] == ["en", "1. The students' answers", "ready"]
    assert seen["fr-FR"] == seen["ca-ES"]  # any other language: Catalan
    assert seen["401"] == "401: la clau d'accés falta o no és correcta (API key)"
    too_many = str(seen["too_many"])
    assert "massa dades per a una sola feina" in too_many and "Field" not in too_many and "items" not in too_many
    assert seen["switched"][3] == too_many[:3] + ": demasiados datos para un solo trabajo: divide el archivo"
    assert seen["switched"][:3] == [
        "es",
        "Enviar 5 respuestas a evaluar",
        "Respuestas leídas: 5, de 5 alumnos. Revísalas y pulsa «Enviar».",
    ]
    assert seen["reloaded"] == ["es", "es"] and seen["local"] == 0
