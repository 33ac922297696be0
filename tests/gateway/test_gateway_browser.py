"""The gateway's page in a real browser: headless Chromium from the
distribution's packages, driven by playwright (never ``playwright install``:
its own browser download is not used). Skipped, saying so, where
/usr/bin/chromium is absent (``.ci/run`` installs it).

The page is driven as a teacher would: paste a CSV, submit, watch the grades
arrive through EventSource; mid-stream the gateway is restarted (the browser
reconnects by itself with Last-Event-ID) and the page also reconnects by
hand; every result must arrive once, in id order, with nothing missing.
"""

from __future__ import annotations

import csv
import io
import json
import os
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from consumer.engine.fake import FakeEngine
from consumer.gateway.server import gateway_serving
from consumer.testing.topics import create_topics, make_settings, running
from tests.kafka_harness import TopicNames

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


async def test_the_page_submits_shows_every_grade_and_survives_reconnects(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames
) -> None:
    from playwright.async_api import async_playwright

    control = topic_names.requests.replace(".requests", ".control")
    settings = make_settings(kafka_bootstrap, topic_names, kafka_group_kwargs, KAFKA_CONTROL_TOPIC=control,
                             BATCH_SIZE=2)  # fmt: skip
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
                await page.fill("#csv", sample_csv(N_ITEMS))
                await page.click("#submit")
                await page.wait_for_function("window.texteval.itemIndexes.length >= 6", timeout=30_000)
                at_restart: int = await page.evaluate("window.texteval.itemIndexes.length")
            # The gateway went away mid-stream; a new one on the same port
            # knows the job only from the progress topic.
            async with gateway_serving(settings, port=port):
                await page.wait_for_function("window.texteval.itemIndexes.length >= 20", timeout=30_000)
                await page.evaluate("window.texteval.reconnect()")  # and once by hand, from the last id
                await page.wait_for_function("window.texteval.done", timeout=60_000)
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


async def test_the_page_sends_the_api_key_and_shows_refusals(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames
) -> None:
    from playwright.async_api import async_playwright

    control = topic_names.requests.replace(".requests", ".control")
    settings = make_settings(kafka_bootstrap, topic_names, kafka_group_kwargs, KAFKA_CONTROL_TOPIC=control,
                             GATEWAY_API_KEYS="page-key-5q")  # fmt: skip
    await create_topics(kafka_bootstrap, settings.service_topics())
    async with (
        running(settings, FakeEngine(delay_s=0.01)),
        gateway_serving(settings) as (_, base),
        async_playwright() as pw,
    ):
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        try:
            page = await browser.new_page()
            await page.goto(base + "/")  # the page itself needs no key
            await page.fill("#csv", sample_csv(5))
            await page.click("#submit")
            await page.wait_for_function("document.getElementById('status').textContent.startsWith('401')")
            refused = await page.text_content("#status")
            await page.fill("#key", "page-key-5q")
            await page.click("#submit")
            await page.wait_for_function("window.texteval.done", timeout=30_000)
            indexes = await page.evaluate("window.texteval.itemIndexes")
            downloaded = await page.evaluate("fetch(document.getElementById('download-csv').href).then(r => r.text())")
        finally:
            await browser.close()
    assert refused is not None and "API key" in refused
    assert sorted(indexes) == list(range(5))
    assert len(downloaded.strip().splitlines()) == 6  # the download link carries the key too
