"""The checker: did every produced item get a result? (Jepsen's lost-write idea.)

An operator gives it the jobs that were produced (a manifest) and it reads the
results and progress topics of a live deployment, from the beginning, and
reports per job: items without a result (lost), extra copies of a result
(duplicates), results that no request asked for, and whether the job's
``complete`` event arrived with the right counts. A job ended by a
``cancelled`` event (contract 1.1) is whole when every item that event counts
as completed has a result: the items it never graded are cancelled, not lost.

Delivery is at-least-once and ``result_id`` is the dedup key, so duplicates
are reported but are not failures. Results of jobs outside the manifest are
counted as orphans and are not failures either: the topics may be shared.

Reading, checking and rendering are separate so the check is a pure function
that tests (and the fault tests' scripts) can call on any list of messages.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consumer.contract import JOB_ID_PATTERN, ProgressEventType, result_id
from consumer.kafka import Start, TopicReader, client_kwargs
from consumer.settings import Settings
from consumer.tools.files import InputFileError, read_jsonl

SHOWN_INDEXES = 10  # missing/unexpected indexes listed per job by render()


class ManifestError(InputFileError):
    """A manifest line that is not a job (the message names file and line)."""


def read_manifest(path: Path) -> dict[str, int]:
    """job_id -> expected item count, from a JSONL of full requests or
    ``{"job_id": ..., "total_items": N}`` lines (blank lines are skipped)."""
    expected: dict[str, int] = {}
    first_line: dict[str, int] = {}
    for number, entry in read_jsonl(path, error=ManifestError, where=lambda n: f"{path}:{n}"):
        where = f"{path}:{number}"
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}: expected a JSON object, got {type(entry).__name__}")
        job_id = entry.get("job_id")
        # The consumer derives an id for requests without one, which the
        # operator cannot know in advance: such a job cannot be checked.
        if not isinstance(job_id, str) or not re.fullmatch(JOB_ID_PATTERN, job_id):
            raise ManifestError(f"{where}: job_id missing or not 1-128 characters of A-Z a-z 0-9 . _ : / -")
        items, total = entry.get("items"), entry.get("total_items")
        if items is not None and (not isinstance(items, list) or not items):
            raise ManifestError(f"{where}: items must be a non-empty list")
        if total is not None and (not isinstance(total, int) or isinstance(total, bool) or total < 1):
            raise ManifestError(f"{where}: total_items must be a positive integer")
        count = len(items) if items is not None else total
        if count is None:
            raise ManifestError(f"{where}: needs items or total_items")
        if total is not None and count != total:
            raise ManifestError(f"{where}: total_items {total} but {count} items")
        # Results are keyed by job_id#index, so two jobs with one id cannot
        # be told apart on the topics.
        if job_id in expected:
            raise ManifestError(f"{where}: job_id {job_id!r} already on line {first_line[job_id]}")
        expected[job_id] = count
        first_line[job_id] = number
    if not expected:
        raise ManifestError(f"{path}: no jobs")
    return expected


@dataclass(frozen=True)
class JobCheck:
    job_id: str
    expected: int
    received: int  # unique, well-formed result_ids (so received + lost == expected)
    missing: list[int]  # item indexes without any result: the lost writes
    duplicates: int  # extra copies of result_ids already seen
    unexpected: list[str]  # result_ids no request asked for
    complete_events: int
    complete_problem: str | None  # why the (last) complete event is wrong or absent
    errors: dict[str, int]  # error results by code
    cancelled: bool = False  # ended by a ``cancelled`` event: ``missing`` are items never graded
    # Cancelled: items a progress event reported done that have no result.
    reported_missing: list[int] = dataclasses.field(default_factory=list)

    @property
    def lost(self) -> int:
        return len(self.reported_missing) if self.cancelled else len(self.missing)

    @property
    def complete_ok(self) -> bool:
        return self.complete_problem is None

    @property
    def ok(self) -> bool:
        return not self.lost and not self.unexpected and self.complete_ok


@dataclass(frozen=True)
class VerifyReport:
    jobs: list[JobCheck]
    orphans: int = 0  # results of jobs not in the manifest
    undecodable: int = 0  # records whose value is not a JSON object

    @property
    def lost(self) -> int:
        return sum(j.lost for j in self.jobs)

    @property
    def duplicates(self) -> int:
        return sum(j.duplicates for j in self.jobs)

    @property
    def max_duplicates(self) -> int:
        return max((j.duplicates for j in self.jobs), default=0)

    @property
    def mean_duplicates(self) -> float:
        return self.duplicates / len(self.jobs) if self.jobs else 0.0

    @property
    def ok(self) -> bool:
        return all(j.ok for j in self.jobs)

    def to_dict(self) -> dict[str, Any]:
        jobs = [dataclasses.asdict(j) | {"lost": j.lost, "complete_ok": j.complete_ok, "ok": j.ok} for j in self.jobs]
        totals = {name: getattr(self, name) for name in ("lost", "duplicates", "max_duplicates", "mean_duplicates")}
        return {"ok": self.ok, **totals, "orphans": self.orphans, "undecodable": self.undecodable, "jobs": jobs}


def _index(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check(
    expected: Mapping[str, int],
    results: Iterable[Mapping[str, Any]],
    progress: Iterable[Mapping[str, Any]],
    *,
    undecodable: int = 0,
) -> VerifyReport:
    """Compare decoded result and progress messages with the manifest."""
    copies: dict[str, Counter[str]] = {job_id: Counter() for job_id in expected}
    # The last copy of each result wins: after a redelivery the job ran again
    # and its last complete event counts that run's outcomes.
    latest: dict[str, dict[str, Mapping[str, Any]]] = {job_id: {} for job_id in expected}
    unexpected: dict[str, set[str]] = {job_id: set() for job_id in expected}
    orphans = 0
    for result in results:
        job_id = result.get("job_id")
        if not isinstance(job_id, str) or job_id not in expected:
            orphans += 1
            continue
        rid, index = result.get("result_id"), _index(result.get("item_index"))
        if index is None or not 0 <= index < expected[job_id] or rid != result_id(job_id, index):
            unexpected[job_id].add(str(rid))
            continue
        copies[job_id][rid] += 1
        latest[job_id][rid] = result

    completes: dict[str, list[Mapping[str, Any]]] = {job_id: [] for job_id in expected}
    cancels: dict[str, Mapping[str, Any]] = {}
    reported: dict[str, set[int]] = {job_id: set() for job_id in expected}  # in batch_complete, before the end
    for event in progress:
        job_id = event.get("job_id")
        if job_id not in completes:
            continue
        kind = event.get("event")
        if kind == ProgressEventType.COMPLETE:
            completes[job_id].append(event)
        elif kind == ProgressEventType.CANCELLED and not completes[job_id]:
            # A job is terminal after its first complete or cancelled event.
            cancels.setdefault(job_id, event)
        elif kind == ProgressEventType.BATCH_COMPLETE and job_id not in cancels:
            reported[job_id] |= _reported_indexes(event)

    jobs: list[JobCheck] = []
    for job_id, total in expected.items():
        got = latest[job_id]
        seen = {_index(r["item_index"]) for r in got.values()}
        cancel = cancels.get(job_id)
        statuses = [r.get("status") for r in got.values()]
        codes = Counter(_error_code(r) for r in got.values() if r.get("status") == "error")
        jobs.append(
            JobCheck(
                job_id=job_id,
                expected=total,
                received=len(got),
                missing=[i for i in range(total) if i not in seen],
                duplicates=sum(n - 1 for n in copies[job_id].values()),
                unexpected=sorted(unexpected[job_id]),
                complete_events=len(completes[job_id]),
                complete_problem=(
                    _cancelled_problem(cancel, len(got), statuses.count("ok"))
                    if cancel is not None
                    else _complete_problem(completes[job_id], total, statuses.count("ok"))
                ),
                errors=dict(sorted(codes.items())),
                cancelled=cancel is not None,
                reported_missing=sorted(reported[job_id] - seen) if cancel is not None else [],
            )
        )
    return VerifyReport(jobs=jobs, orphans=orphans, undecodable=undecodable)


def _error_code(result: Mapping[str, Any]) -> str:
    error = result.get("error")
    return str(error.get("code", "unknown")) if isinstance(error, dict) else "unknown"


def _complete_problem(events: list[Mapping[str, Any]], total: int, ok_results: int) -> str | None:
    if not events:
        return "no complete event"
    # A redelivered job completes again; its last event describes the run
    # whose results are the latest copies.
    data = events[-1].get("data") or {}
    processed, succeeded, failed = (data.get(k) for k in ("total_processed", "succeeded", "failed"))
    if processed != total:
        return f"total_processed {processed} != {total}"
    if not isinstance(succeeded, int) or not isinstance(failed, int) or succeeded + failed != total:
        return f"succeeded {succeeded} + failed {failed} != {total}"
    if succeeded != ok_results:
        return f"succeeded {succeeded} != {ok_results} ok results"
    return None


def _reported_indexes(event: Mapping[str, Any]) -> set[int]:
    data = event.get("data")
    summaries = data.get("results") if isinstance(data, dict) else None
    if not isinstance(summaries, list):
        return set()
    return {i for s in summaries if isinstance(s, dict) and (i := _index(s.get("item_index"))) is not None}


def _cancelled_problem(event: Mapping[str, Any], received: int, ok_results: int) -> str | None:
    # Items in flight at the cancel may publish after it: more results than
    # the event counts is fine, fewer means results the event promised are lost.
    data = event.get("data") or {}
    completed, succeeded = data.get("completed"), data.get("succeeded")
    if not isinstance(completed, int) or not isinstance(succeeded, int):
        return "cancelled event without counts"
    if received < completed:
        return f"cancelled counts {completed} completed, {received} results"
    if ok_results < succeeded:
        return f"cancelled counts {succeeded} succeeded, {ok_results} ok results"
    return None


class TopicMessages(list[dict[str, Any]]):
    """The decoded messages of a topic, plus how many records were not JSON objects."""

    undecodable: int = 0


async def read_topic(settings: Settings, topic: str, *, timeout_s: float) -> TopicMessages:
    """Every message of ``topic`` from the beginning to (at least) the end
    offsets taken at the start: a snapshot, so a busy topic still ends."""
    messages = TopicMessages()
    async with asyncio.timeout(timeout_s):
        reader = TopicReader(
            client_kwargs(settings),
            [topic],
            start=Start.BEGINNING,
            max_message_bytes=settings.kafka.max_message_bytes,
            metadata_timeout_s=1.0,  # a topic that is not there is an error here, not something to wait for
        )
        async with reader:
            await reader.to_end(lambda record: _decode(record.value, messages))
    return messages


def _decode(value: bytes | None, into: TopicMessages) -> None:
    try:
        decoded = json.loads(value) if value is not None else None
    except ValueError:  # not JSON, or not UTF-8
        decoded = None
    if isinstance(decoded, dict):
        into.append(decoded)
    else:
        into.undecodable += 1


async def verify(
    settings: Settings, manifest_path: Path, *, wait_s: float = 0, read_timeout_s: float = 60.0
) -> VerifyReport:
    """Read both topics and check them against the manifest; with ``wait_s``,
    read again until the report is ok or the time is up."""
    expected = read_manifest(manifest_path)
    deadline = time.monotonic() + wait_s
    while True:
        # Progress first: a complete event is produced after its job's
        # results are acknowledged, so every complete in the progress
        # snapshot has its results inside the later results snapshot.
        progress = await read_topic(settings, settings.kafka.progress_topic, timeout_s=read_timeout_s)
        results = await read_topic(settings, settings.kafka.results_topic, timeout_s=read_timeout_s)
        report = check(expected, results, progress, undecodable=progress.undecodable + results.undecodable)
        remaining = deadline - time.monotonic()
        if report.ok or remaining <= 0:
            return report
        await asyncio.sleep(min(1.0, remaining))


def _shown(values: list[Any]) -> str:
    more = f" (+{len(values) - SHOWN_INDEXES} more)" if len(values) > SHOWN_INDEXES else ""
    return ", ".join(map(str, values[:SHOWN_INDEXES])) + more


def render(report: VerifyReport) -> str:
    width = max([len("job_id"), *(len(j.job_id) for j in report.jobs)])
    head = f"{'job_id':<{width}}  {'expected':>8}  {'received':>8}  {'lost':>6}  {'dups':>6}  complete"
    lines = [head + "  errors"]
    for j in report.jobs:
        complete = "ok" if j.complete_ok else f"NO: {j.complete_problem}"
        if j.cancelled:
            complete = f"cancelled, {len(j.missing)} not graded" + ("" if j.complete_ok else f" ({complete})")
        if j.complete_events > 1:
            complete += f" ({j.complete_events} events)"
        errors = ", ".join(f"{code}: {n}" for code, n in j.errors.items()) or "-"
        lines.append(
            f"{j.job_id:<{width}}  {j.expected:>8}  {j.received:>8}  {j.lost:>6}  {j.duplicates:>6}  "
            f"{complete}  {errors}"
        )
        if j.missing and not j.cancelled:
            lines.append(f"  missing item indexes: {_shown(j.missing)}")
        if j.reported_missing:
            lines.append(f"  reported done, no result: {_shown(j.reported_missing)}")
        if j.unexpected:
            lines.append(f"  unexpected result_ids: {_shown(j.unexpected)}")
    lines.append(
        f"{len(report.jobs)} jobs, {sum(j.expected for j in report.jobs)} items: lost {report.lost}, "
        f"duplicates {report.duplicates} (max {report.max_duplicates} per job, mean {report.mean_duplicates:.2f}), "
        f"orphan results {report.orphans}, undecodable records {report.undecodable}"
    )
    lines.append("OK" if report.ok else "FAILED: lost items, unexpected results or missing/wrong complete events")
    return "\n".join(lines)


async def main(settings: Settings, manifest_path: Path, wait_s: float, as_json: bool) -> int:
    """``texteval verify``: 0 when every job is whole, 1 on any loss or wrong/missing complete,
    2 when the manifest or the topics cannot be read."""
    from aiokafka.errors import KafkaError

    try:
        report = await verify(settings, manifest_path, wait_s=wait_s)
    except (ManifestError, OSError, LookupError, TimeoutError, KafkaError) as exc:
        print(f"verify: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if as_json else render(report))
    return 0 if report.ok else 1
