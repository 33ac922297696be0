"""The bad-input corpus (``tests/data/bad_input_corpus.json``): every case gets its documented outcome.

Two levels, the same cases:

- ``parse_request`` directly (no broker): dead letter or job, the reason, the
  detail (naming the field and item index, never the student's text);
- the real consumer against a real broker. All cases share ONE consumer (one
  per distinct ``settings``): every bad message is followed by a valid
  sentinel job, all in one partition, in order, and the topics are read back
  once. Then each case is checked: exactly one dead letter with the original
  key, value and headers plus the reason and detail headers, or exactly the
  documented results and one ``complete`` with matching counts; the sentinel
  right after it completed; its offset was committed; the consumer was still
  healthy at the end.

A case with a known consumer bug carries ``xfail`` in the corpus (per level,
with the reason); it is marked ``xfail(strict=True)`` so the fix turns it
green. Known-bug cases run last in their consumer, so an offset they hold
back does not hold back the others.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from consumer.contract import EvaluationResult
from consumer.engine.fake import FakeEngine
from consumer.metrics import Metrics
from consumer.pipeline.intake import Job, Rejection, RejectReason, parse_request
from consumer.testing.topics import (
    committed,
    committed_to_end,
    items,
    job,
    make_settings,
    read_all,
    read_until,
    running,
    values,
)
from tests.kafka_harness import TopicNames

CORPUS_PATH = Path(__file__).parents[1] / "data" / "bad_input_corpus.json"
KEY = b"corpus"
CASE_HEADER = "corpus.case"  # on every corpus message; a dead letter must keep it
MAX_ITEMS = 2000
UNIT_FALLBACK_JOB_ID = "corpus.requests:0:42"
FIELDS = ("id_alumno", "curso", "consigna", "respuesta")
VALUE_KEYS = ("value_text", "value_json", "value_b64", "value_null")


@dataclass(frozen=True)
class Expected:
    item_index: int
    status: str
    code: str | None


@dataclass(frozen=True)
class Case:
    name: str
    value: bytes | None
    key: bytes | None
    settings: tuple[tuple[str, Any], ...]  # consumer overrides; cases with equal settings share a consumer
    dlt: str | None  # the reason, for a dead letter
    detail_contains: str
    value_dropped: bool  # the dead letter carries no value (too big to copy)
    results: tuple[Expected, ...]
    job_id: str | None  # None: the consumer's fallback <topic>:<partition>:<offset>
    item_ids: tuple[str, ...]  # id_alumno per item, for result cases
    student_texts: tuple[str, ...]  # strings of the message a dead-letter detail must not quote
    xfail: dict[str, str] = field(default_factory=dict)  # level ("unit", "kafka") -> known bug


# --- the corpus file ------------------------------------------------------------


def _expand(node: Any, default_item: dict[str, Any]) -> Any:
    """Expand the corpus's generator directives (see the file's "about")."""
    if isinstance(node, list):
        return [_expand(child, default_item) for child in node]
    if not isinstance(node, dict):
        return node
    kind = node.get("generate")
    if kind is None:
        return {key: _expand(child, default_item) for key, child in node.items()}
    if kind == "chars":
        unit, n = str(node.get("unit", "x")), int(node["n"])
        return (unit * (n // len(unit) + 1))[:n]
    if kind == "list":
        return [_expand(node["of"], default_item) for _ in range(int(node["n"]))]
    if kind == "json":
        return json.dumps(_expand(node["of"], default_item), ensure_ascii=False)
    if kind == "item":
        return _item(default_item, _expand(node.get("set", {}), default_item), node.get("omit", ()))
    if kind == "items":
        shared = _expand(node.get("set", {}), default_item)
        patches = node.get("patch", {})
        return [
            _item(
                {**default_item, "id_alumno": f"A{i:04d}", "respuesta": f"{default_item['respuesta']} ({i})"},
                {**shared, **_expand(patches.get(str(i), {}), default_item)},
                (),
            )
            for i in range(int(node["n"]))
        ]
    raise ValueError(f"unknown generator {kind!r}")


def _item(base: dict[str, Any], changes: dict[str, Any], omit: Any) -> dict[str, Any]:
    item = {**base, **changes}
    for name in omit:
        del item[name]
    return item


def _value(raw: dict[str, Any], default_item: dict[str, Any]) -> bytes | None:
    if raw.get("value_null"):
        return None
    if "value_b64" in raw:
        return base64.b64decode(raw["value_b64"])
    if "value_json" in raw:
        return json.dumps(_expand(raw["value_json"], default_item), ensure_ascii=False).encode()
    text = _expand(raw["value_text"], default_item)
    return ("".join(text) if isinstance(text, list) else str(text)).encode()


def _decoded(value: bytes | None) -> Any:
    """The value as Python's json reads it (UTF-8, else Latin-1), or None."""
    if not value:
        return None
    for encoding in ("utf-8", "latin-1"):
        try:
            return json.loads(value.decode(encoding))
        except (ValueError, RecursionError):
            continue
    return None


def _strings(node: Any) -> set[str]:
    if isinstance(node, str):
        return {node}
    if isinstance(node, list):
        return set().union(*(_strings(child) for child in node)) if node else set()
    if isinstance(node, dict):
        return set().union(*(_strings(child) for child in node.values())) if node else set()
    return set()


def _expected(entries: list[dict[str, Any]]) -> tuple[Expected, ...]:
    out: list[Expected] = []
    for entry in entries:
        first, last = entry.get("item_index_range", [entry.get("item_index"), entry.get("item_index")])
        out.extend(Expected(index, entry["status"], entry.get("code")) for index in range(first, last + 1))
    return tuple(out)


def _case(raw: dict[str, Any], default_item: dict[str, Any]) -> Case:
    value = _value(raw, default_item)
    expect = raw["expect"]
    body = _decoded(value)
    declared = body.get("job_id") if isinstance(body, dict) else None
    results = _expected(expect.get("results", []))
    texts = body.get("items") if isinstance(body, dict) else body  # the job_id is not student text
    item_ids = tuple(str(item["id_alumno"]) for item in body["items"]) if results else ()
    return Case(
        name=raw["name"],
        value=value,
        key=None if raw.get("key_null") else KEY,
        settings=tuple(sorted(raw.get("settings", {}).items())),
        dlt=expect.get("dlt"),
        detail_contains=expect.get("detail_contains", ""),
        value_dropped=bool(expect.get("value_dropped", False)),
        results=results,
        job_id=expect.get("job_id", declared if isinstance(declared, str) else None),
        item_ids=item_ids,
        student_texts=tuple(sorted(text for text in _strings(texts) if len(text) >= 8)),
        xfail=dict(raw.get("xfail", {})),
    )


RAW = json.loads(CORPUS_PATH.read_text(encoding="utf-8"))
CASES = [_case(raw, RAW["default_item"]) for raw in RAW["cases"]]


def _params(level: str) -> list[Any]:
    return [
        pytest.param(
            case,
            id=case.name,
            marks=[pytest.mark.xfail(strict=True, reason=case.xfail[level])] if level in case.xfail else [],
        )
        for case in CASES
    ]


def _assert_private(detail: str, case: Case) -> None:
    quoted = [text[:24] for text in case.student_texts if text[:24] in detail]
    assert not quoted, f"the dead-letter detail quotes the message's text: {quoted}"


def _sentinel_id(case: Case) -> str:
    return f"sentinel-{case.name}"


# --- the corpus itself ------------------------------------------------------------


def test_the_corpus_is_well_formed_and_covers_the_issue() -> None:
    names = [raw["name"] for raw in RAW["cases"]]
    assert len(names) >= 30 and len(set(names)) == len(names)
    for raw in RAW["cases"]:
        assert sum(key in raw for key in VALUE_KEYS) == 1, raw["name"]
        assert set(raw.get("xfail", {})) <= {"unit", "kafka"}, raw["name"]
    declared = [case.job_id for case in CASES if case.job_id is not None]
    assert len(set(declared)) == len(declared)  # results are matched to cases by job_id
    assert not any(job_id.startswith("sentinel-") for job_id in declared)
    for case in CASES:
        assert (case.dlt is None) != (not case.results), case.name  # exactly one kind of outcome
        assert [e.item_index for e in case.results] == list(range(len(case.results))), case.name
        assert len(case.item_ids) == len(case.results), case.name
        if case.dlt is not None:
            assert case.dlt in set(RejectReason) and case.detail_contains, case.name
    # Transport cases (codecs, corrupt batches) are not values: tests/pipeline/test_transport.py covers them.
    # job_id_conflict needs an earlier request: tests/pipeline/test_jobstate_integration.py; internal_error is
    # a bug, never an input's fault: tests/pipeline/test_internal_error.py.
    value_reasons = set(RejectReason) - {
        RejectReason.UNDECODABLE_RECORD, RejectReason.JOB_ID_CONFLICT, RejectReason.INTERNAL_ERROR,
    }  # fmt: skip
    assert {case.dlt for case in CASES} >= {reason.value for reason in value_reasons}
    problems = {
        "missing": ("Field required",),
        "empty or blank": ("at least 1 character", "must not be empty or whitespace"),
        "wrong type": ("Input should be a valid string",),
        "too long": ("String should have at most",),
    }
    for name in FIELDS:
        for kind, texts in problems.items():
            if kind == "too long" and name == "curso":
                continue  # same rule as consigna
            covered = [
                c.name
                for c in CASES
                if f".{name}: " in c.detail_contains and any(t in c.detail_contains for t in texts)
            ]
            assert covered, f"no case with {name} {kind}"
    assert any(e.code == "input_too_long" for case in CASES for e in case.results)
    assert any(case.key is None and case.results for case in CASES)
    assert any(case.settings for case in CASES)  # the message larger than the fetch size


# --- level 1: parse_request, no broker ------------------------------------------------


@pytest.mark.parametrize("case", _params("unit"))
def test_parse_request_makes_the_documented_decision(case: Case) -> None:
    parsed = parse_request(case.value, fallback_job_id=UNIT_FALLBACK_JOB_ID, max_items=MAX_ITEMS)
    if case.dlt is not None:
        assert isinstance(parsed, Rejection), f"accepted as job {getattr(parsed, 'job_id', '?')}"
        assert parsed.reason.value == case.dlt
        assert case.detail_contains in parsed.detail
        _assert_private(parsed.detail, case)
    else:
        assert isinstance(parsed, Job), parsed
        assert parsed.job_id == (case.job_id or UNIT_FALLBACK_JOB_ID)
        assert [item.id_alumno for item in parsed.items] == list(case.item_ids)


# --- level 2: the consumer on a real broker ---------------------------------------------


@dataclass
class GroupRun:
    """What one consumer did with its share of the corpus."""

    topics: TopicNames
    group_id: str
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)  # case -> (its offset, its sentinel's)
    dead: dict[int, list[ConsumerRecord[bytes, bytes]]] = field(default_factory=dict)  # by original offset
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by job_id
    accepted: set[str] = field(default_factory=set)
    completes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # complete events' data, by job_id
    committed: int | None = None
    health_reasons: list[str] = field(default_factory=list)
    waited_out: str | None = None  # the wait that timed out, if any

    def job_id(self, case: Case) -> str:
        return case.job_id or f"{self.topics.requests}:0:{self.offsets[case.name][0]}"


def _completed(records: list[ConsumerRecord[bytes, bytes]]) -> set[str]:
    return {event["job_id"] for event in values(records) if event["event"] == "complete"}


async def _settle(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _produce(bootstrap: str, topic: str, cases: list[Case]) -> dict[str, tuple[int, int]]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=16 * 1024 * 1024)
    await producer.start()
    offsets: dict[str, tuple[int, int]] = {}
    try:
        for case in cases:
            headers = [(CASE_HEADER, case.name.encode())]
            bad = await producer.send_and_wait(topic, value=case.value, key=case.key, headers=headers)
            good = await producer.send_and_wait(topic, value=job(_sentinel_id(case), items(1)), key=KEY)
            assert bad.partition == good.partition == 0
            offsets[case.name] = (bad.offset, good.offset)
    finally:
        await producer.stop()
    return offsets


async def _run_group(bootstrap: str, group_kwargs: dict[str, int], cases: list[Case]) -> GroupRun:
    topics = TopicNames.unique()
    settings = make_settings(bootstrap, topics, group_kwargs, **dict(cases[0].settings))
    run = GroupRun(topics, settings.kafka.group_id)
    ordered = sorted(cases, key=lambda case: "kafka" in case.xfail)  # known bugs last
    async with running(settings, FakeEngine(), Metrics(), partitions=1) as app:
        run.offsets = await _produce(bootstrap, topics.requests, ordered)
        wanted = {_sentinel_id(case) for case in ordered} | {run.job_id(case) for case in ordered if case.results}
        try:
            await read_until(bootstrap, topics.progress, lambda records: wanted <= _completed(records), timeout_s=20)
        except AssertionError as exc:  # reported per case: its sentinel or job never completed
            run.waited_out = str(exc)
        # All work done and committed, unless a known bug holds an offset back.
        await committed_to_end(bootstrap, settings.kafka.group_id, topics.requests, timeout_s=3)
        run.health_reasons = list(app.health_report().reasons)
    run.committed = (await committed(bootstrap, settings.kafka.group_id, topics.requests, 1))[0]
    for record in await read_all(bootstrap, topics.dlt):
        offset = int(dict(record.headers)["texteval.original.offset"])
        run.dead.setdefault(offset, []).append(record)
    for result in values(await read_all(bootstrap, topics.results)):
        run.results.setdefault(result["job_id"], []).append(result)
    for event in values(await read_all(bootstrap, topics.progress)):
        if event["event"] == "accepted":
            run.accepted.add(event["job_id"])
        elif event["event"] == "complete":
            run.completes.setdefault(event["job_id"], []).append(event["data"])
    return run


@pytest.fixture(scope="module")
async def corpus_runs(kafka_bootstrap: str, kafka_group_kwargs: dict[str, int]) -> dict[str, GroupRun]:
    """Case name -> the run of the consumer that got it (one consumer per distinct settings)."""
    groups: dict[tuple[tuple[str, Any], ...], list[Case]] = defaultdict(list)
    for case in CASES:
        groups[case.settings].append(case)
    runs = await asyncio.gather(*(_run_group(kafka_bootstrap, kafka_group_kwargs, group) for group in groups.values()))
    return {case.name: run for group, run in zip(groups.values(), runs, strict=True) for case in group}


def _check_dead_letter(case: Case, run: GroupRun, dead: list[ConsumerRecord[bytes, bytes]]) -> None:
    assert len(dead) == 1, f"{len(dead)} dead letters for offset {run.offsets[case.name][0]}"
    record = dead[0]
    headers = dict(record.headers)
    assert record.key == case.key
    if case.value_dropped:
        assert case.value is not None and record.value is None
        assert headers["texteval.error.value_dropped"] == str(len(case.value)).encode()
    else:
        assert record.value == case.value  # the original bytes, unchanged
    assert headers[CASE_HEADER] == case.name.encode()  # the original headers kept
    assert headers["texteval.error.reason"] == str(case.dlt).encode()
    detail = headers["texteval.error.detail"].decode()
    assert case.detail_contains in detail
    _assert_private(detail, case)
    assert headers["texteval.original.topic"] == run.topics.requests.encode()
    assert headers["texteval.original.partition"] == b"0"
    assert headers["texteval.consumer.group"] == run.group_id.encode()
    assert int(headers["texteval.original.timestamp"]) > 0
    # Rejected whole: no job ran under its own name or the fallback one.
    assert run.job_id(case) not in run.accepted and run.job_id(case) not in run.results


def _check_results(case: Case, run: GroupRun) -> None:
    job_id = run.job_id(case)
    results = run.results.get(job_id, [])
    got = sorted((r["item_index"], r["status"], (r["error"] or {}).get("code")) for r in results)
    assert got == [(e.item_index, e.status, e.code) for e in case.results]  # exactly these, once each
    for raw in results:
        result = EvaluationResult.model_validate(raw)
        assert result.result_id == f"{job_id}#{result.item_index}"
        assert result.id_alumno == case.item_ids[result.item_index]
    completes = run.completes.get(job_id, [])
    assert len(completes) == 1, f"{len(completes)} complete events for {job_id}"
    ok = sum(e.status == "ok" for e in case.results)
    counts = (completes[0]["total_processed"], completes[0]["succeeded"], completes[0]["failed"])
    assert counts == (len(case.results), ok, len(case.results) - ok)


@pytest.mark.kafka
@pytest.mark.parametrize("case", _params("kafka"))
async def test_the_consumer_gives_the_documented_outcome(case: Case, corpus_runs: dict[str, GroupRun]) -> None:
    run = corpus_runs[case.name]
    offset, sentinel_offset = run.offsets[case.name]
    # The consumer stayed up, and the valid job right after this message was processed.
    assert not run.health_reasons, run.health_reasons
    assert len(run.completes.get(_sentinel_id(case), [])) == 1, run.waited_out or "sentinel not complete"
    dead = run.dead.get(offset, [])
    if case.dlt is not None:
        _check_dead_letter(case, run, dead)
    else:
        assert not dead, [dict(r.headers)["texteval.error.detail"] for r in dead]
        _check_results(case, run)
    # Done means committed: the group's offset moved past the message and its sentinel.
    assert run.committed is not None and run.committed > sentinel_offset, (run.committed, sentinel_offset)
