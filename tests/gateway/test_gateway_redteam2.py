"""The second red team's findings (issue 28), each reproduced at the unit level (the real app,
store, keys and limits; tail and producer doubled) and answered: partial results never called
complete, eviction and limits per school, bounded bodies, cheap reads, the low findings.
Finding 1 (lockout) is in test_gateway_attacks.py beside the first round's key guessing."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from consumer.gateway.jobs import GatewayJobStatus, JobStore
from consumer.gateway.limits import BodyBudget, Refused
from consumer.gateway.submit import BodyTooSlow, read_limited
from consumer.http import HttpServer
from consumer.spreadsheets import restore_cell, safe_cell
from tests.gateway.gateway_double import (
    EVENT,
    KEY_A,
    KEY_ADMIN,
    KEY_B,
    TWO_TENANTS,
    accepted,
    batch,
    bearer,
    harness,
    item,
    ok_result,
)


def complete(job_id: str, total: int) -> dict[str, Any]:
    data = {"total_processed": total, "succeeded": total, "failed": 0, "total_time_seconds": 1.0}
    return {"event": "complete", "job_id": job_id, "data": data}


# --- Finding 2: a gateway that met a job part-way never calls it completed ---------------------


def test_a_job_met_part_way_is_incomplete_and_its_file_says_so() -> None:
    h = harness(**TWO_TENANTS)
    # The gateway (re)started after the job's first 6 results: it sees results 6..9 and the end.
    h.feed(batch("school-a/late", [ok_result(i) for i in range(6, 10)], 10))
    h.feed(complete("school-a/late", 10))
    status = h.client.get("/jobs/school-a/late", headers=bearer(KEY_A)).json()
    assert (status["status"], status["completed"], status["missing_results"]) == ("incomplete", 4, 6)
    for fmt in ("csv", "jsonl"):
        answer = h.client.get(f"/jobs/school-a/late/results?format={fmt}", headers=bearer(KEY_A))
        assert answer.status_code == 200
        assert answer.headers["texteval-missing-results"] == "6"
        assert f'filename="school-a_late.incomplete.{fmt}"' in answer.headers["content-disposition"]
    # A job followed from its start is completed, with no such mark.
    h.feed(accepted("school-a/whole", 2))
    h.feed(batch("school-a/whole", [ok_result(0), ok_result(1)], 2))
    h.feed(complete("school-a/whole", 2))
    whole = h.client.get("/jobs/school-a/whole", headers=bearer(KEY_A)).json()
    assert (whole["status"], whole["missing_results"]) == ("completed", 0)
    answer = h.client.get("/jobs/school-a/whole/results", headers=bearer(KEY_A))
    assert "texteval-missing-results" not in answer.headers
    assert 'filename="school-a_whole.csv"' in answer.headers["content-disposition"]


def test_a_re_published_terminal_event_alone_is_not_a_completed_job_with_no_results() -> None:
    """The consumer answers a re-sent finished job with its terminal event only (finding 3's
    "completed with 0 results and an empty CSV")."""
    h = harness(**TWO_TENANTS)
    h.feed(complete("school-a/again", 10))
    status = h.client.get("/jobs/school-a/again", headers=bearer(KEY_A)).json()
    assert (status["status"], status["total_items"], status["missing_results"]) == ("incomplete", 10, 10)


# --- Finding 6: eviction and limits per school ---------------------------------------------------


def test_one_school_filling_the_store_evicts_its_own_jobs_never_anothers() -> None:
    store = JobStore(ttl_s=3600, max_jobs=30, max_bytes=10**8)

    def finish(job_id: str) -> None:
        for n, message in enumerate((accepted(job_id, 1), batch(job_id, [ok_result(0)], 1), complete(job_id, 1))):
            raw = json.dumps({"schema_version": 1, **message})
            store.apply(EVENT.validate_json(raw), raw, offset=n, timestamp_ms=int(time.time() * 1000))

    finish("school-b/recent")
    for i in range(40):
        finish(f"school-a/j{i}")
    assert store.get("school-b/recent") is not None
    assert len(store) == 30
    assert store.get("school-a/j0") is None and store.get("school-a/j39") is not None


def test_a_second_key_of_a_school_shares_its_write_limit() -> None:
    second = "tenant-a-second-key-" + "Q" * 32
    h = harness(GATEWAY_API_KEYS=f"school-a={KEY_A},school-a={second},school-b={KEY_B}",
                GATEWAY_WRITE_BURST="4", GATEWAY_WRITE_RATE_PER_S="0.01")  # fmt: skip
    statuses = [
        h.client.post("/evaluate", json={"job_id": f"w{i}", "items": [item()]}, headers=bearer(key)).status_code
        for i, key in enumerate([KEY_A, second] * 4)
    ]
    other = h.client.post("/evaluate", json={"job_id": "x", "items": [item()]}, headers=bearer(KEY_B))
    assert statuses == [200] * 4 + [429] * 4 and other.status_code == 200


# --- Finding 4: request bodies held at once are bounded -----------------------------------------


def test_bodies_past_the_inflight_budget_get_503_with_retry_after_and_give_it_back() -> None:
    h = harness(**TWO_TENANTS, GATEWAY_MAX_INFLIGHT_BODY_BYTES="100000")
    held = h.gateway.bodies.lease()
    held.take(90_000)  # other requests' bodies being read
    body = {"job_id": "big", "items": [item(i, "x" * 1000) for i in range(20)]}
    refused = h.client.post("/evaluate", json=body, headers=bearer(KEY_A))
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert h.gateway.bodies.used == 90_000 and h.sent(h.gateway.settings.kafka.requests_topic) == []
    held.release()
    assert h.client.post("/evaluate", json=body, headers=bearer(KEY_A)).status_code == 200
    assert h.gateway.bodies.used == 0


async def test_an_undeclared_body_takes_the_budget_as_it_arrives() -> None:
    budget = BodyBudget(1000)

    async def chunks() -> Any:
        for _ in range(5):
            yield b"x" * 300

    lease = budget.lease()
    with pytest.raises(Refused) as refused:
        await read_limited(chunks(), None, 10_000, lease)
    assert refused.value.status == 503 and budget.used == 0


# --- Finding 5: downloads parse a job once -------------------------------------------------------


def test_results_rows_are_parsed_once_per_new_event_and_dropped_with_the_job() -> None:
    h = harness(**TWO_TENANTS)
    h.feed(accepted("school-a/r", 3))
    h.feed(batch("school-a/r", [ok_result(0), ok_result(1)], 3))
    record = h.gateway.store.get("school-a/r")
    assert record is not None
    first = h.gateway.rows.rows(record)
    assert h.gateway.rows.rows(record) is first  # the second download reuses the parse
    h.feed(batch("school-a/r", [ok_result(2)], 3))
    assert [r["item_index"] for r in h.gateway.rows.rows(record)] == [0, 1, 2]
    h.gateway.store.erase("school-a/r", time.time())
    assert record.rows_cache is None


def test_a_results_file_is_built_once_per_new_event_not_once_per_download() -> None:
    h = harness(**TWO_TENANTS)
    h.feed(accepted("school-a/f", 3))
    h.feed(batch("school-a/f", [ok_result(0), ok_result(1)], 3))
    record = h.gateway.store.get("school-a/f")
    assert record is not None
    first = h.gateway.rows.file(record, "csv")
    assert h.gateway.rows.file(record, "csv") is first  # 64 downloads write the CSV once
    assert h.gateway.rows.file(record, "jsonl") is not first
    downloaded = h.client.get("/jobs/school-a/f/results", headers=bearer(KEY_A))
    assert downloaded.content == first.text and h.gateway.rows.file(record, "csv") is first  # encoded once too
    h.feed(batch("school-a/f", [ok_result(2)], 3))
    fresh = h.gateway.rows.file(record, "csv")
    assert fresh is not first and bytes(fresh.text).count(b"\n") == 4  # the header and three rows


# --- Finding 9: the low ones --------------------------------------------------------------------


def test_an_open_gateway_answers_loopback_hosts_only() -> None:
    h = harness()
    assert h.client.get("/jobs").status_code == 200
    assert h.client.get("/jobs", headers={"Host": "127.0.0.1:8080"}).status_code == 200
    assert h.client.get("/jobs", headers={"Host": "[::1]:8080"}).status_code == 200
    for host in ("rebind.attacker.example", "rebind.attacker.example:8080", "localhost.attacker.example"):
        assert h.client.get("/jobs", headers={"Host": host}).status_code == 421, host
    # With keys the key is the guard: any Host (an ingress's name) is served.
    keyed = harness(**TWO_TENANTS)
    assert keyed.client.get("/jobs", headers={"Host": "grades.school.example", **bearer(KEY_A)}).status_code == 200


def test_body_posts_must_say_json_and_job_ids_take_no_dot_dot() -> None:
    h = harness(**TWO_TENANTS)
    body = json.dumps({"job_id": "plain", "items": [item()]})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        answer = h.client.post("/evaluate", content=body, headers={"Content-Type": content_type, **bearer(KEY_A)})
        assert answer.status_code == 415, content_type
    ok = h.client.post("/evaluate", content=body, headers={"Content-Type": "application/json; charset=utf-8",
                                                           **bearer(KEY_A)})  # fmt: skip
    assert ok.status_code == 200
    h.feed(accepted("school-a/plain", 1))
    corrections = h.client.post("/jobs/school-a/plain/corrections", content=b'[{"item_index": 0, "nota": 1}]',
                                headers={"Content-Type": "text/plain", **bearer(KEY_A)})  # fmt: skip
    assert corrections.status_code == 415
    for job_id in ("../school-b/x", "a/../b", ".."):
        answer = h.client.post("/evaluate", json={"job_id": job_id, "items": [item()]}, headers=bearer(KEY_A))
        assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "job_id"], job_id


def test_deeply_nested_json_is_a_422_on_every_body_route() -> None:
    h = harness(**TWO_TENANTS)
    deep = b"[" * 50_000 + b"]" * 50_000
    headers = {"Content-Type": "application/json", **bearer(KEY_A)}
    assert h.client.post("/evaluate", content=deep, headers=headers).status_code == 422
    h.feed(accepted("school-a/d", 2))
    assert h.client.post("/jobs/school-a/d/corrections", content=deep, headers=headers).status_code == 422


async def test_a_last_event_id_past_a_finished_jobs_end_closes_the_stream_at_once() -> None:
    h = harness(**TWO_TENANTS)
    h.feed(accepted("school-a/s", 1))
    h.feed(batch("school-a/s", [ok_result(0)], 1))
    h.feed(complete("school-a/s", 1))

    def read() -> str:
        headers = {"Last-Event-ID": str(10**6), **bearer(KEY_A)}
        with h.client.stream("GET", "/stream/school-a/s", headers=headers) as response:
            return "".join(response.iter_text())

    text = await asyncio.wait_for(asyncio.to_thread(read), timeout=10)
    assert "data:" not in text
    assert h.gateway.slots.total == 0


def test_health_shows_activity_to_operators_only() -> None:
    h = harness(**TWO_TENANTS)
    for headers in ({}, bearer(KEY_A), bearer("wrong-" + "w" * 40)):
        body = h.client.get("/health", headers=headers).json()
        assert set(body) == {"status", "reasons", "auth"}, headers
    assert {"jobs_kept", "open_streams"} <= set(h.client.get("/health", headers=bearer(KEY_ADMIN)).json())
    # Probes without a key are not failed logins.
    assert all(h.client.get("/health").status_code == 200 for _ in range(40))


@pytest.mark.parametrize(
    "text",
    [" =1+1", "\n=1+1", "\u00a0=1+1", "\ufeff=1+1", "\u202e=1+1", "\uff1d1+1", "\uff0b1", "\u200b=1", "'=x", " "],
)
def test_the_formula_guard_sees_through_blanks_invisibles_and_fullwidth_signs(text: str) -> None:
    safe = safe_cell(text)
    assert isinstance(safe, str) and safe.startswith("'")
    assert restore_cell(safe) == text


def test_nul_characters_are_removed_from_cells() -> None:
    assert safe_cell("Bé\x00=1") == "Bé=1"
    assert safe_cell("\x00=1") == "'=1"
    assert safe_cell(GatewayJobStatus.COMPLETED.value) == "completed"


async def test_a_half_sent_request_head_is_closed_after_the_deadline() -> None:
    """A real uvicorn server (consumer/http.py): half a request head, or nothing, is cut off;
    a complete request on a fresh connection is served."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    server = HttpServer(app, "127.0.0.1", 0, head_timeout_s=0.5)
    await server.start()
    try:
        half = await asyncio.open_connection("127.0.0.1", server.port)
        silent = await asyncio.open_connection("127.0.0.1", server.port)
        half[1].write(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        for reader, _ in (half, silent):
            assert await asyncio.wait_for(reader.read(), timeout=5) == b""  # closed by the server
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert (await asyncio.wait_for(reader.readline(), timeout=5)).startswith(b"HTTP/1.1 204")
        for _, w in (half, silent, (reader, writer)):
            w.close()
    finally:
        await server.stop()


async def test_a_half_sent_body_gets_408_and_gives_its_budget_back() -> None:
    budget = BodyBudget(10_000)

    async def trickle() -> Any:
        yield b"x" * 100
        await asyncio.sleep(30)
        yield b"x"

    lease = budget.lease()
    with pytest.raises(BodyTooSlow):
        await read_limited(trickle(), "5000", 10_000, lease, timeout_s=0.2)
    lease.release()
    assert budget.used == 0
