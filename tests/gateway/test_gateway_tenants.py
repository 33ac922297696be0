"""Tenants at the gateway (contract 1.2), without a broker: keys that say who
is calling, ids that carry the owner, 404 for another tenant's job, the
caller's list of jobs, quotas, the audit trail."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from consumer.gateway.auth import MIN_KEY_CHARS, ApiKeys, Caller, GatewaySetupError, keys_from
from consumer.gateway.submit import InvalidBody, parse_submission
from consumer.settings import Settings
from tests.gateway.gateway_double import (
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

LONG = "x" * MIN_KEY_CHARS


def settings(**env: str) -> Settings:
    return Settings(_env_file=None, **env)  # type: ignore[call-arg]


def test_keys_say_who_is_calling() -> None:
    keys = keys_from(settings(**TWO_TENANTS))
    a, b, admin = (
        keys.identify(f"Bearer {KEY_A}"),
        keys.identify(f"Bearer {KEY_B}"),
        keys.identify(f"Bearer {KEY_ADMIN}"),
    )
    assert a is not None and (a.tenant, a.admin) == ("school-a", False)
    assert b is not None and b.tenant == "school-b" and b.key_id != a.key_id
    assert admin is not None and (admin.tenant, admin.admin) == (None, True)
    assert keys.identify("Bearer " + KEY_A[:-1]) is None and keys.identify(None) is None
    # The key id is a digest prefix: it names the key in logs without giving it away.
    assert len(a.key_id) == 10 and a.key_id not in KEY_A
    assert a.sees("school-a/x") and not a.sees("school-b/x") and not a.sees("no-tenant") and not a.sees("school-a")
    assert admin.sees("school-b/x") and admin.sees("no-tenant")
    assert Caller("open").sees("anything") and Caller("open").open


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GATEWAY_API_KEYS": LONG}, "tenant=key"),  # the 1.1 form is refused, never read as "sees all"
        ({"GATEWAY_API_KEYS": f"school-a={LONG},{LONG}y"}, "entry 2 has no tenant"),
        ({"GATEWAY_API_KEYS": "school-a=short-key"}, f"shorter than {MIN_KEY_CHARS}"),
        ({"GATEWAY_ADMIN_KEYS": "short-admin"}, "GATEWAY_ADMIN_KEYS"),
        ({"GATEWAY_API_KEYS": f"a/b={LONG}"}, "no '/'"),
        ({"GATEWAY_API_KEYS": f"school-a={LONG},school-b={LONG}"}, "the same key"),
        ({"GATEWAY_API_KEYS": f"school-a={LONG}", "GATEWAY_ADMIN_KEYS": LONG}, "the same key"),
        ({"GATEWAY_API_KEYS_FILE": "/nonexistent/keys"}, "GATEWAY_API_KEYS_FILE"),
    ],
)
def test_settings_that_would_widen_access_are_refused_at_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(GatewaySetupError, match=message) as caught:
        keys_from(settings(**env))
    assert LONG not in str(caught.value)  # a refused key is never echoed


def test_keys_come_from_a_file_too_and_a_demo_key_is_generated_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# one per line\nschool-c={'c' * 40}\n\n", encoding="utf-8")
    keys = keys_from(settings(GATEWAY_API_KEYS=f"school-a={KEY_A}", GATEWAY_API_KEYS_FILE=str(path)))
    found = keys.identify("Bearer " + "c" * 40)
    assert found is not None and found.tenant == "school-c" and keys.identify(f"Bearer {KEY_A}") is not None
    generated = tmp_path / "new" / "keys"
    keys = keys_from(settings(GATEWAY_API_KEYS_FILE=str(generated), GATEWAY_GENERATE_KEY_FOR="demo"))
    tenant, key = generated.read_text(encoding="utf-8").strip().split("=", 1)
    assert tenant == "demo" and len(key) >= MIN_KEY_CHARS and keys.required
    assert os.stat(generated).st_mode & 0o777 == 0o600
    again = keys_from(settings(GATEWAY_API_KEYS_FILE=str(generated), GATEWAY_GENERATE_KEY_FOR="demo"))
    assert again.identify(f"Bearer {key}") is not None  # kept, not regenerated


def test_a_tenants_job_id_carries_the_tenant() -> None:
    body = json.dumps({"job_id": "term-1/batch-7", "items": [item()]}).encode()
    assert parse_submission(body, max_items=5, tenant="school-a").job_id == "school-a/term-1/batch-7"
    assert parse_submission(body, max_items=5).job_id == "term-1/batch-7"  # an open gateway: as today
    fresh = parse_submission(json.dumps({"items": [item()]}).encode(), max_items=5, tenant="school-a")
    tenant, _, rest = fresh.job_id.partition("/")
    assert tenant == "school-a" and len(rest) == 36 and rest[14] == "4"  # a uuid4: 122 random bits
    assert json.loads(fresh.value)["job_id"] == fresh.job_id
    with pytest.raises(InvalidBody) as caught:
        parse_submission(json.dumps({"job_id": "x" * 125, "items": [item()]}).encode(), max_items=5, tenant="school-a")
    assert caught.value.errors[0]["loc"] == ["body", "job_id"]


def test_two_tenants_with_the_same_client_id_get_two_jobs_and_never_see_each_other() -> None:
    h = harness(**TWO_TENANTS)
    a = h.client.post("/evaluate", json={"job_id": "batch-1", "items": [item()]}, headers=bearer(KEY_A))
    b = h.client.post("/evaluate", json={"job_id": "batch-1", "items": [item(), item(1)]}, headers=bearer(KEY_B))
    assert a.status_code == b.status_code == 200
    assert (a.json()["job_id"], b.json()["job_id"]) == ("school-a/batch-1", "school-b/batch-1")
    assert b.json()["stream_url"] == "/stream/school-b/batch-1" and b.json()["stream_token"]
    assert [key for _, key, _ in h.producer.sent] == [b"school-a/batch-1", b"school-b/batch-1"]
    h.feed(accepted("school-b/batch-1", 2))
    h.feed(batch("school-b/batch-1", [ok_result(0), ok_result(1)], 2))
    other = "/jobs/school-b/batch-1"
    answers = {
        "status": h.client.get(other, headers=bearer(KEY_A)),
        "results": h.client.get(other + "/results", headers=bearer(KEY_A)),
        "results_jsonl": h.client.get(other + "/results?format=jsonl", headers=bearer(KEY_A)),
        "token": h.client.post(other + "/stream_token", headers=bearer(KEY_A)),
        "cancel": h.client.delete(other, headers=bearer(KEY_A)),
    }
    assert {name: a.status_code for name, a in answers.items()} == dict.fromkeys(answers, 404)
    assert all(a.json() == {"detail": "Job not found"} for a in answers.values())  # as an unknown job's
    stream = h.client.get("/stream/school-b/batch-1", headers=bearer(KEY_A))
    assert [line for line in stream.text.splitlines() if line.startswith("data:")] == [
        'data: {"error":"Job not found"}'
    ]
    assert not [c for c in h.sent(h.gateway.settings.kafka.control_topic) if c["job_id"] == "school-b/batch-1"]
    # The owner and an operator see it.
    assert h.client.get(other, headers=bearer(KEY_B)).json()["completed"] == 2
    assert h.client.get(other, headers=bearer(KEY_ADMIN)).status_code == 200


def test_cancels_carry_the_tenant_or_the_operator() -> None:
    h = harness(**TWO_TENANTS)
    h.client.post("/evaluate", json={"job_id": "j", "items": [item()]}, headers=bearer(KEY_A))
    assert h.client.delete("/jobs/school-a/j", headers=bearer(KEY_A)).status_code == 202
    assert h.client.delete("/jobs/school-a/j", headers=bearer(KEY_ADMIN)).status_code == 202
    commands = [c for _, key, c in h.producer.sent if key == b"school-a/j" and b"action" in c]
    assert [json.loads(c) for c in commands] == [
        {"schema_version": 1, "action": "cancel", "job_id": "school-a/j", "tenant": "school-a"},
        {"schema_version": 1, "action": "cancel", "job_id": "school-a/j", "admin": True},
    ]


def test_get_jobs_lists_the_callers_own_jobs_a_page_at_a_time() -> None:
    h = harness(**TWO_TENANTS)
    for i in range(5):
        h.feed(accepted(f"school-a/j{i}", 1))
    h.feed(accepted("school-b/secret", 1))
    h.feed(accepted("no-tenant", 1))
    first = h.client.get("/jobs", params={"limit": 2}, headers=bearer(KEY_A)).json()
    assert [j["job_id"] for j in first["jobs"]] == ["school-a/j0", "school-a/j1"] and first["next"] == "school-a/j1"
    rest = h.client.get("/jobs", params={"limit": 10, "after": first["next"]}, headers=bearer(KEY_A)).json()
    assert [j["job_id"] for j in rest["jobs"]] == ["school-a/j2", "school-a/j3", "school-a/j4"] and rest["next"] is None
    everything = h.client.get("/jobs", headers=bearer(KEY_ADMIN)).json()["jobs"]
    assert len(everything) == 7
    assert h.client.get("/jobs").status_code == 401


def test_an_open_loopback_gateway_keeps_tenant_less_ids() -> None:
    h = harness()
    answer = h.client.post("/evaluate", json={"job_id": "plain-1", "items": [item()]})
    assert answer.status_code == 200
    assert set(answer.json()) == {"job_id", "total_items", "estimated_time_seconds", "status", "stream_url"}
    assert answer.json()["job_id"] == "plain-1" and h.client.get("/jobs/plain-1").status_code == 200
    assert h.client.delete("/jobs/plain-1").status_code == 202
    assert h.sent(h.gateway.settings.kafka.control_topic) == [
        {"schema_version": 1, "action": "cancel", "job_id": "plain-1"}
    ]


def test_quotas_per_tenant_answer_429_with_retry_after() -> None:
    h = harness(**TWO_TENANTS, GATEWAY_TENANT_MAX_OPEN_JOBS="2", GATEWAY_TENANT_MAX_WAITING_ITEMS="5")
    post = lambda key, n, job: h.client.post("/evaluate", json={"job_id": job, "items": [item(i) for i in range(n)]},  # noqa: E731
                                             headers=bearer(key))  # fmt: skip
    assert post(KEY_A, 3, "a1").status_code == 200
    too_many_items = post(KEY_A, 3, "a2")  # 3 waiting + 3 > 5
    assert too_many_items.status_code == 429 and int(too_many_items.headers["retry-after"]) >= 1
    assert post(KEY_A, 2, "a2").status_code == 200
    too_many_jobs = post(KEY_A, 1, "a3")
    assert too_many_jobs.status_code == 429 and "not finished" in too_many_jobs.json()["detail"]
    assert post(KEY_B, 3, "b1").status_code == 200  # another tenant's quota is its own
    assert post(KEY_A, 3, "a1").status_code == 200  # the same request again is the same job, not a new one
    h.feed(accepted("school-a/a1", 3))
    h.feed(batch("school-a/a1", [ok_result(i) for i in range(3)], 3))
    h.feed({"event": "complete", "job_id": "school-a/a1",
            "data": {"total_processed": 3, "succeeded": 3, "failed": 0, "total_time_seconds": 1.0}})  # fmt: skip
    assert post(KEY_A, 1, "a3").status_code == 200  # a finished job frees its share
    text = h.client.get("/metrics").text
    assert 'texteval_gateway_limited_total{limit="tenant_open_jobs"} 1.0' in text
    assert 'texteval_gateway_limited_total{limit="tenant_waiting_items"} 1.0' in text


def test_every_action_leaves_one_audit_line_without_keys_or_texts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="consumer.gateway.audit")
    secret_text = "Text secret de l'alumne 9c1e"
    h = harness(**TWO_TENANTS)
    h.client.post("/evaluate", json={"job_id": "j", "items": [item(text=secret_text)]}, headers=bearer(KEY_A))
    h.client.get("/jobs/school-b/x", headers=bearer(KEY_A))
    h.client.get("/jobs/school-a/j", headers=bearer("wrong-" + "k" * 40))
    newline = h.client.get("/jobs/school-a/j%0Aforged=1", headers=bearer(KEY_A))
    h.client.get("/jobs/school-a/j forged=1", headers=bearer(KEY_A))
    h.client.get("/stream/school-b/x", headers=bearer(KEY_A))  # answered 200 with the not-found event
    lines = [r.getMessage() for r in caplog.records if r.name == "consumer.gateway.audit"]
    key_id = keys_from(settings(**TWO_TENANTS)).identify(f"Bearer {KEY_A}")
    assert key_id is not None
    assert lines[0] == f"tenant=school-a key={key_id.key_id} action=POST_/evaluate job=school-a/j status=200"
    assert lines[1] == f"tenant=school-a key={key_id.key_id} action=GET_/jobs/{{job_id:path}} job=school-b/x status=404"
    assert lines[2].startswith("tenant=- key=- action=GET_/jobs/{job_id:path} job=school-a/j status=401")
    assert newline.status_code == 404  # matches no route: no line, so nothing to forge one with
    assert lines[3].endswith("job=<invalid id, 19 chars> status=404")  # not a job id: not logged as given
    assert lines[4].endswith("action=GET_/stream/{job_id:path} job=school-b/x status=404")
    assert len(lines) == 5 and "\n" not in "".join(lines)
    everything = caplog.text + "".join(lines)
    assert KEY_A not in everything and "9c1e" not in everything


def test_api_keys_hold_digests_only() -> None:
    keys = ApiKeys.from_entries([f"school-a={KEY_A}"], [KEY_ADMIN])
    assert KEY_A not in repr(vars(keys)) and KEY_ADMIN not in repr(vars(keys))


def test_a_stream_token_reads_its_one_job_and_a_fresh_one_can_be_had_with_the_key() -> None:
    h = harness(**TWO_TENANTS, GATEWAY_STREAM_TOKEN_TTL_S="60")
    posted = h.client.post("/evaluate", json={"job_id": "t", "items": [item()]}, headers=bearer(KEY_A)).json()
    h.client.post("/evaluate", json={"job_id": "u", "items": [item()]}, headers=bearer(KEY_A))
    token = posted["stream_token"]
    assert posted["stream_token_expires_in_s"] == 60 and KEY_A not in token
    assert h.client.get(f"/jobs/school-a/t?token={token}").status_code == 200
    assert h.client.get(f"/jobs/school-a/u?token={token}").status_code == 401  # another job, even the same tenant's
    fresh = h.client.post("/jobs/school-a/t/stream_token", headers=bearer(KEY_A))
    assert fresh.status_code == 200
    assert h.client.get(f"/jobs/school-a/t/results?token={fresh.json()['stream_token']}").status_code == 200
    assert h.client.post(f"/jobs/school-a/t/stream_token?token={token}").status_code == 401  # a token makes no token
