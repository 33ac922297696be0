"""What erasing a job removes at once, and what only retention removes, until when (contract 1.2).

The design (docs/privacy.md, "Erasing a job"): what texteval keeps *per job*
is removed at once: every gateway's memory (each reads the erase command
from the control topic and drops the job, and never re-learns it from the
progress topic while the command is in force) and the job-state record (the
consumer that owns the job's partition writes its tombstone). The topics
keep their records until retention deletes them: today's readers rely on
their keys and shapes (results and progress keyed by ``job_id``, several
results in one ``batch_complete`` event), so neither per-result tombstones
on a compacted topic nor per-job encryption keys (crypto-shredding) could be
added without a new ``schema_version``; instead every topic's retention is
bounded (``deploy/kafka/create-topics.sh``: gone within retention + 10%),
and the answer says until when each may still hold the job's data.

The retention times are ``create-topics.sh``'s defaults (a test runs the
script and compares): a topic created or altered otherwise keeps its own.
Here at the ground layer because the gateway (``DELETE /jobs/{id}?erase=true``)
and the command line (``texteval erase``) give the same answer.

Contract 1.3: the job's decision records stay (they hold no text and no
name: an appeal or an inspector may still ask which model gave which grade)
for ``DECISIONS_RETENTION_MS``, and the erase adds an ``erased`` record
(``produce_erase`` writes it beside the command); ``texteval agreement`` and
``texteval export-training`` skip the job from then on. The answer says both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from consumer.commands import produce_command
from consumer.contract import ControlAction, ControlCommand
from consumer.decisions import erased_record
from consumer.settings import Settings
from consumer.tenants import tenant_of

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

DAY_S = 86_400
# The broker's log.retention.check.interval.ms default (create-topics.sh's assumption), in seconds.
RETENTION_CHECK_S = 300
# create-topics.sh's retention.ms of each topic, in seconds (the DLTs: KAFKA_DLT_RETENTION_MS's default).
REQUESTS_RETENTION_S = 7 * DAY_S
RESULTS_RETENTION_S = 14 * DAY_S
PROGRESS_RETENTION_S = 1 * DAY_S
DLT_RETENTION_S = REQUESTS_RETENTION_S
CORRECTIONS_RETENTION_S = RESULTS_RETENTION_S


def segment_s(retention_s: float) -> float:
    """create-topics.sh's segment.ms rule (retention / 10 - the check interval), in seconds."""
    return retention_s / 10 - RETENTION_CHECK_S


@dataclass(frozen=True, slots=True)
class RetainedPlace:
    """A topic that may still hold the erased job's data, and until when at the latest."""

    topic: str
    holds: str
    retention_s: float
    segment_s: float
    gone_by_s: float  # unix time: now + retention + segment + the broker's check interval

    def as_json(self) -> dict[str, object]:
        return {
            "place": self.topic,
            "holds": self.holds,
            "retention_s": int(self.retention_s),
            "segment_s": int(self.segment_s),
            "gone_by": _iso(self.gone_by_s),
        }


def retained_places(settings: Settings, now_s: float) -> list[RetainedPlace]:
    """Every topic where a job's data stays after its erase, with its latest deletion time."""
    s = settings
    places = [
        (s.kafka.requests_topic, "the request: texts, id_alumno, curso, consigna", REQUESTS_RETENTION_S),
        (s.kafka.results_topic, "one result per text: id_alumno, grade, feedback", RESULTS_RETENTION_S),
        (s.kafka.progress_topic, "progress events: id_alumno, grade, feedback of every result", PROGRESS_RETENTION_S),
        (s.kafka.dlt_topic, "the request whole, if it was rejected (e.g. job_id_conflict)", DLT_RETENTION_S),
        (s.kafka.corrections_topic, "teachers' corrections: grade, feedback, comment", CORRECTIONS_RETENTION_S),
        (s.kafka.corrections_dlt_topic, "corrections that could not be read, whole", DLT_RETENTION_S),
        # Written only while a shadow grades (docs/models.md), but named always: a shadow
        # may have graded the job's sample, and the answer cannot know whether one ran.
        (
            s.kafka.shadow_results_topic,
            "a candidate model's results (shadow grading), if one graded the job: id_alumno, grade, feedback",
            RESULTS_RETENTION_S,
        ),
    ]
    return [
        RetainedPlace(topic, holds, retention, segment_s(retention), gone_by_s(now_s, retention))
        for topic, holds, retention in places
    ]


def gone_by_s(now_s: float, retention_s: float) -> float:
    """A record written at ``now_s`` is deleted by then at the latest (docs/privacy.md,
    "Retention that holds"): retention, plus its segment's time open, plus the broker's check."""
    return now_s + retention_s + segment_s(retention_s) + RETENTION_CHECK_S


def erased_now(settings: Settings) -> list[dict[str, object]]:
    """The places the erase empties at once (once the command is read)."""
    state_segment_s = segment_s(settings.privacy.job_id_retention_s)
    return [
        {
            "place": "gateway memory",
            "detail": "every gateway drops the job's events and results, and ignores the job's progress "
            f"events for {int(settings.kafka.cancel_ttl_s)} s (CANCEL_TTL_S): this one now, the others "
            "when they read the command from the control topic (also one started later)",
        },
        {
            "place": settings.kafka.checkpoints_topic,
            "detail": "the job-state record is deleted (a tombstone from the consumer that owns the job's "
            f"partition); compaction removes the old value within {int(state_segment_s)} s "
            "(max.compaction.lag.ms); the job is cancelled if it runs, and a request under its id "
            f"is not graded for {int(settings.kafka.cancel_ttl_s)} s (CANCEL_TTL_S)",
        },
        {
            "place": settings.kafka.shadow_checkpoints_topic,
            "detail": "a shadow's job-state record, if a shadow graded the job: deleted by the shadow "
            "(a consumer too, it reads the same command), as above",
        },
    ]


SKIPPED_BY = "texteval agreement and texteval export-training skip the job from now on (its corrections too)"


def records_kept(settings: Settings, now_s: float) -> list[dict[str, object]]:
    """The decision records that stay after an erase (contract 1.3): no text, no name."""
    retention_s = settings.privacy.decisions_retention_ms / 1000
    place = RetainedPlace(
        settings.kafka.decisions_topic,
        "decision records: result id, answer_hmac (not the text), model, prompt hash, grade, probabilities, "
        "review reasons, corrections' grades and who; no text, no feedback, no id_alumno; an erased record is added",
        retention_s,
        segment_s(retention_s),
        gone_by_s(now_s, retention_s),
    )
    return [
        place.as_json()
        | {"why": "appeals, and the EU AI Act's logs (Art. 12, 19, 26(6))", "setting": "DECISIONS_RETENTION_MS"}
    ]


def erase_answer(settings: Settings, job_id: str, now_s: float) -> dict[str, object]:
    """The answer of ``DELETE /jobs/{id}?erase=true`` and ``texteval erase``."""
    return {
        "job_id": job_id,
        "status": "erase_requested",
        "erased_now": erased_now(settings),
        "kept_until_retention": [place.as_json() for place in retained_places(settings, now_s)],
        "records_kept": records_kept(settings, now_s),
        "teachers_loop": SKIPPED_BY,
        "outside": "files already written (results downloads, CLI --out files) and downstream readers' copies",
    }


async def produce_erase(producer: AIOKafkaProducer, settings: Settings, command: ControlCommand) -> None:
    """The erase command to the control topic and the job's ``erased`` decision record
    (contract 1.3), both keyed by ``job_id``; returns once both are acknowledged.

    The command first: it is what erases. The record marks the job erased for as long as
    its other records stay (the command is kept a day), so that every reader of
    corrections skips it; if it fails after the command went out, the caller's retry
    sends both again (a second command and record change nothing).
    """
    await produce_command(producer, settings.kafka.control_topic, command)
    record = erased_record(command.job_id)
    await producer.send_and_wait(
        settings.kafka.decisions_topic, value=record.model_dump_json().encode(), key=command.job_id.encode()
    )


def erase_command(job_id: str, *, tenant: str | None, admin: bool) -> ControlCommand:
    """The erase command; pydantic's ValidationError for a job id the contract refuses."""
    return ControlCommand(action=ControlAction.ERASE, job_id=job_id, tenant=tenant, admin=admin)


def honoured(command: ControlCommand) -> bool:
    """The contract's rule (1.2, "Tenants"): a command acts on a job of its own tenant, or an operator's."""
    return command.admin or command.tenant == tenant_of(command.job_id)


def _iso(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
