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


TENANT_KEY = "browser-school-key-" + "t" * 32


@pytest.mark.parametrize("key", [None, TENANT_KEY], ids=["open", "tenant-key"])
async def test_the_page_submits_shows_every_grade_and_survives_reconnects(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames, key: str | None
) -> None:
    """With a tenant's key the stream URL carries a stream token, which the
    restarted gateway (same keys) must honour when the browser reconnects."""
    from playwright.async_api import async_playwright

    control = topic_names.requests.replace(".requests", ".control")
    keys = {"GATEWAY_API_KEYS": f"school-9={key}"} if key else {}
    settings = make_settings(kafka_bootstrap, topic_names, kafka_group_kwargs, KAFKA_CONTROL_TOPIC=control,
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
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames
) -> None:
    from playwright.async_api import async_playwright

    control = topic_names.requests.replace(".requests", ".control")
    key = "page-key-5q" + "k" * 32
    settings = make_settings(kafka_bootstrap, topic_names, kafka_group_kwargs, KAFKA_CONTROL_TOPIC=control,
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
