"""The gateway's parts without a broker: job store, keys, ids, bodies, imports."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from consumer.contract import (
    AcceptedData,
    AcceptedEvent,
    ControlCommand,
    ProgressEvent,
)
from consumer.gateway.auth import ApiKeys, GatewaySetupError, check_exposure, is_loopback
from consumer.gateway.jobs import AnyProgressEvent, EvictReason, GatewayJobStatus, JobStore, results_rows
from consumer.gateway.sse import BadLastEventId, parse_last_event_id
from consumer.gateway.submit import BodyTooLarge, InvalidBody, parse_submission, read_limited
from consumer.settings import Settings

EVENT = TypeAdapter[AnyProgressEvent](ProgressEvent)


def accepted(job_id: str, total: int = 4) -> dict[str, Any]:
    return {"event": "accepted", "job_id": job_id, "data": {"total_items": total, "estimated_time_seconds": 1}}


def batch(job_id: str, indexes: list[int], total: int = 4, feedback: str = "bé") -> dict[str, Any]:
    results = [{"id_alumno": f"A{i}", "item_index": i, "status": "ok", "nota": 3, "feedback": feedback}
               for i in indexes]  # fmt: skip
    progress = {"completed": len(indexes), "total": total, "percentage": 0.0, "elapsed_seconds": 1.0,
                "estimated_remaining_seconds": 1.0, "avg_time_per_item": 0.25}  # fmt: skip
    return {"event": "batch_complete", "job_id": job_id,
            "data": {"batch_number": 1, "results": results, "progress": progress}}  # fmt: skip


def complete(job_id: str, n: int = 4) -> dict[str, Any]:
    data = {"total_processed": n, "succeeded": n, "failed": 0, "total_time_seconds": 1.0}
    return {"event": "complete", "job_id": job_id, "data": data}


class Feeder:
    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.offset = 0

    def __call__(self, message: dict[str, Any], at_s: float = 1000.0) -> bool:
        raw = json.dumps({"schema_version": 1, **message})
        self.offset += 1
        stored = self.store.apply(EVENT.validate_json(raw), raw, offset=self.offset, timestamp_ms=int(at_s * 1000))
        return stored is not None


def test_repeated_results_reach_subscribers_once_and_nothing_follows_the_terminal_event() -> None:
    store = JobStore(ttl_s=60, max_jobs=10, max_bytes=10**6)
    feed = Feeder(store)
    assert feed(accepted("j"))
    assert feed(batch("j", [0, 1]))
    assert not feed(batch("j", [0, 1]))  # re-published after a consumer crash: dropped
    assert feed(batch("j", [1, 2, 3]))  # partly new: only item 2 and 3 go out
    assert feed(complete("j"))
    assert not feed(complete("j"))  # a reader keeps the first terminal event
    assert not feed(batch("j", [3]))
    record = store.get("j")
    assert record is not None and record.state is GatewayJobStatus.COMPLETED
    partial = json.loads(record.events[2].payload)
    assert [r["item_index"] for r in partial["data"]["results"]] == [2, 3]
    assert [row["item_index"] for row in results_rows(record)] == [0, 1, 2, 3]
    assert [e.offset for e in record.events] == [1, 2, 4, 5]  # ids are the records' offsets


def test_past_the_job_cap_the_oldest_finished_jobs_go_first() -> None:
    evicted: list[EvictReason] = []
    store = JobStore(ttl_s=60, max_jobs=3, max_bytes=10**9, on_evict=evicted.append)
    feed = Feeder(store)
    feed(accepted("running-old"))
    for name in ("done-1", "done-2"):
        feed(accepted(name))
        feed(complete(name))
    feed(accepted("new"))
    assert store.get("done-1") is None and store.get("running-old") is not None
    assert len(store) == 3 and evicted == [EvictReason.MAX_JOBS]
    old = store.get("running-old")
    assert old is not None and not old.dropped


def test_past_the_byte_cap_jobs_are_dropped_and_their_streams_told() -> None:
    store = JobStore(ttl_s=60, max_jobs=100, max_bytes=50_000)
    feed = Feeder(store)
    feed(accepted("a", total=1))
    record_a = store.get("a")
    waiter = record_a.changed if record_a else None
    for i in range(10):
        feed(accepted(f"b{i}", total=1))
        feed(batch(f"b{i}", [0], total=1, feedback="x" * 4000))
    assert store.bytes_kept <= 50_000
    assert store.get("a") is None and record_a is not None and record_a.dropped
    assert waiter is not None and waiter.is_set()  # a stream waiting on it wakes up and ends


def test_jobs_expire_after_the_ttl_since_their_last_event() -> None:
    store = JobStore(ttl_s=60, max_jobs=100, max_bytes=10**9)
    feed = Feeder(store)
    feed(accepted("old"), at_s=1000)
    feed(complete("old"), at_s=1010)
    feed(accepted("young"), at_s=1050)
    store.expire(now_s=1080)
    assert store.get("old") is None and store.get("young") is not None
    store.expire(now_s=1111)
    assert len(store) == 0 and store.bytes_kept == 0


def test_a_submission_is_queued_until_accepted_and_forgotten_if_not_produced() -> None:
    store = JobStore(ttl_s=60, max_jobs=100, max_bytes=10**9)
    record = store.submitted("s", 4, "abc", now_s=1000)
    assert record.state is GatewayJobStatus.QUEUED and store.get("s") is record
    Feeder(store)(accepted("s"))
    assert record.state is GatewayJobStatus.PROCESSING and record.request_sha256 == "abc"
    store.submitted("t", 1, "def", now_s=1000)
    store.forget("t")
    assert store.get("t") is None


ALPHA, BETA, GAMMA = "alpha-" + "a" * 30, "beta-" + "b" * 30, "gamma-" + "c" * 30


def test_api_keys_compare_every_key_and_accept_only_bearer() -> None:
    keys = ApiKeys.from_entries([f"school-1={ALPHA}", f"school-2={BETA}"], [])
    assert keys.allows(f"Bearer {BETA}") and keys.allows(f"bearer {ALPHA}")
    assert not keys.allows(f"Bearer {GAMMA}") and not keys.allows(BETA) and not keys.allows(None)
    assert not keys.allows(f"Basic {ALPHA}", ALPHA)  # a wrong header is not rescued by the query
    assert keys.allows(None, ALPHA) and not keys.allows(None, "")
    assert ApiKeys([], []).allows(None)


HOSTS = [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("10.0.0.5", False),
         ("gateway", False)]  # fmt: skip


@pytest.mark.parametrize(("host", "loopback"), HOSTS)
def test_an_open_gateway_only_on_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    if loopback:
        check_exposure(host, ApiKeys([], []), allow_anonymous=False)
    else:
        with pytest.raises(GatewaySetupError, match="GATEWAY_API_KEYS"):
            check_exposure(host, ApiKeys([], []), allow_anonymous=False)
    check_exposure(host, ApiKeys([], []), allow_anonymous=True)
    check_exposure(host, ApiKeys.from_entries([f"t={ALPHA}"], []), allow_anonymous=False)


def test_api_keys_setting_is_secret_and_comma_separated() -> None:
    settings = Settings(_env_file=None, GATEWAY_API_KEYS=" key-uno, key-dos ,,")  # type: ignore[call-arg]
    assert settings.gateway.gateway_keys() == ["key-uno", "key-dos"]
    assert "key-uno" not in repr(settings) and "key-uno" not in str(settings.model_dump())


def test_last_event_id_parsing() -> None:
    assert parse_last_event_id(None) is None and parse_last_event_id("") is None
    assert parse_last_event_id("42") == 42
    for bad in ("-1", "abc", "1.5", "٣", str(2**64), " 1"):
        with pytest.raises(BadLastEventId):
            parse_last_event_id(bad)


async def test_bodies_are_limited_while_read() -> None:
    async def chunks(n: int) -> Any:
        for _ in range(n):
            yield b"x" * 100

    assert len(await read_limited(chunks(3), None, 300)) == 300
    with pytest.raises(BodyTooLarge):
        await read_limited(chunks(4), None, 300)
    with pytest.raises(BodyTooLarge):
        await read_limited(chunks(0), "301", 300)


def test_submissions_keep_the_request_and_hash_only_the_items() -> None:
    item = {"id_alumno": "A", "curso": "3r", "consigna": "c", "respuesta": "r", "extra": 1}
    a = parse_submission(json.dumps({"items": [item]}).encode(), max_items=5)
    b = parse_submission(json.dumps({"job_id": a.job_id, "items": [item]}).encode(), max_items=5)
    assert a.request_sha256 == b.request_sha256 and a.total_items == 1
    assert json.loads(b.value) == {"schema_version": 1, "job_id": a.job_id,
                                   "items": [{k: v for k, v in item.items() if k != "extra"}]}  # fmt: skip
    with pytest.raises(InvalidBody) as caught:
        parse_submission(json.dumps({"items": [item] * 6}).encode(), max_items=5)
    assert caught.value.errors[0]["loc"] == ["body", "items"]


def test_contract_1_1_messages() -> None:
    command = ControlCommand.model_validate_json('{"schema_version": 1, "action": "cancel", "job_id": "a/b"}')
    assert command.model_dump(mode="json") == {"schema_version": 1, "action": "cancel", "job_id": "a/b"}
    for bad in ('{"action": "pause", "job_id": "a"}', '{"action": "cancel", "job_id": "a b"}',
                '{"action": "cancel"}', '{"schema_version": true, "action": "cancel", "job_id": "a"}'):  # fmt: skip
        with pytest.raises(ValidationError):
            ControlCommand.model_validate_json(bad)
    fresh = AcceptedEvent(job_id="j", data=AcceptedData(total_items=3, estimated_time_seconds=1.0))
    assert "resumed_items" not in fresh.model_dump_json()  # 1.0 readers see the message they know
    resumed = AcceptedEvent(job_id="j", data=AcceptedData(total_items=3, estimated_time_seconds=1.0, resumed_items=2))
    assert json.loads(resumed.model_dump_json())["data"]["resumed_items"] == 2
    cancelled = EVENT.validate_python({"event": "cancelled", "job_id": "j", "data": {
        "total_items": 3, "completed": 1, "succeeded": 1, "failed": 0, "total_time_seconds": 0.5}})  # fmt: skip
    assert cancelled.event == "cancelled" and cancelled.data.status == "cancelled"


def test_the_gateway_process_loads_no_engine() -> None:
    code = (
        "import sys\n"
        "from consumer.gateway.app import create_app\n"
        "from consumer.gateway.server import gateway_serving, serve_gateway\n"
        "import consumer.tools.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'vllm', 'transformers')"
        " or m.startswith(('consumer.engine', 'consumer.pipeline')))\n"
        "print(bad)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
