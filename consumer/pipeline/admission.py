"""What may start now: the records fetched and not started, the caps, and pausing
(quixstreams' ``PausingManager`` is the anchor).

Admitting costs memory only: the scheduler, not admission, decides what the
engine runs, so a small job behind big ones is admitted and served at once.
Past a cap (jobs, items or request bytes in flight), records already fetched
wait here in arrival order and the assigned partitions are paused; they
resume when there is room. Nothing new starts while the output topics are
missing (grading now would only throw the grades away) or while a record's
output could not be delivered (its grades could not be written either; the
retries, which go first, probe the outputs).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition

from consumer.pipeline.fetch import Unreadable
from consumer.pipeline.intake import Job, Rejection, RejectReason, parse_request

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

    from consumer.metrics import Metrics
    from consumer.pipeline.inflight import InFlight
    from consumer.pipeline.redelivery import Redeliveries, Redelivery
    from consumer.settings import Settings


@dataclass(slots=True)
class Pending:
    tp: TopicPartition
    record: Any  # ConsumerRecord[bytes, bytes] or fetch.Unreadable
    parsed: Job | Rejection | None = None  # parsed once, on first look


def _unreadable(record: Any) -> Rejection | None:
    """A record the client could not decode is a dead letter before any parsing."""
    if isinstance(record, Unreadable):
        return Rejection(RejectReason.UNDECODABLE_RECORD, f"the client could not decode the record: {record.error}")
    return None


class Admission:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        metrics: Metrics,
        settings: Settings,
        *,
        inflight: InFlight,
        redelivery: Redeliveries,
        outputs_ok: Callable[[], bool],
    ) -> None:
        self._consumer = consumer
        self._metrics = metrics
        self._settings = settings
        self._inflight = inflight
        self._redelivery = redelivery
        self._outputs_ok = outputs_ok
        self._backlog: deque[Pending] = deque()

    def __len__(self) -> int:
        return len(self._backlog)

    def add(self, tp: TopicPartition, record: Any) -> None:
        self._backlog.append(Pending(tp, record, _unreadable(record)))

    def retry(self, due: Iterable[Redelivery]) -> None:
        """Records to run again go first (in their order)."""
        self._backlog.extendleft(Pending(r.tp, r.record, _unreadable(r.record)) for r in reversed(list(due)))

    def next(self, loaded: Callable[[TopicPartition], bool]) -> tuple[TopicPartition, Any, Job | Rejection] | None:
        """The first record (partition, record, parsed) if it may start now; it leaves the backlog.

        ``loaded``: whether a partition's job state is read (aiokafka fetches a
        new assignment while its callback still loads the state: until then,
        its records wait).
        """
        if not self._backlog or not loaded((head := self._backlog[0]).tp):
            return None
        record = head.record
        if head.parsed is None:
            head.parsed = parse_request(
                record.value,
                fallback_job_id=f"{record.topic}:{record.partition}:{record.offset}",
                max_items=self._settings.max_items_per_job,
            )
        parsed = head.parsed
        items, size_bytes = (len(parsed.items), len(record.value or b"")) if isinstance(parsed, Job) else (0, 0)
        if not self._has_room(items, size_bytes, retry=(head.tp, record.offset) in self._redelivery):
            return None
        self._backlog.popleft()
        return head.tp, record, parsed

    def _has_room(self, items: int, size_bytes: int, *, retry: bool) -> bool:
        settings = self._settings
        if not self._outputs_ok() or self._inflight.jobs >= settings.max_concurrent_jobs:
            return False
        if len(self._redelivery) and not retry:
            return False
        inflight = self._inflight.items
        if inflight == 0:
            return True  # an idle consumer always takes the next job, even one above the caps
        return (
            inflight + items <= settings.max_inflight_items
            and self._inflight.request_bytes + size_bytes <= settings.max_inflight_bytes
        )

    def apply_pause(self) -> None:
        # pause() state is lost on reassignment, so it is re-applied every
        # turn of the loop (cheap: a set operation in aiokafka).
        if self._backlog or not self._outputs_ok():
            self._consumer.pause(*self._consumer.assignment())
        else:
            self._consumer.resume(*self._consumer.paused())
        self._metrics.partitions_paused.set(len(self._consumer.paused()))
        # Texts, not jobs: what autoscaling reads (deploy/k8s/keda.yaml).
        backlog = sum(len(p.parsed.items) for p in self._backlog if isinstance(p.parsed, Job))
        self._metrics.items_waiting.set(self._inflight.items + backlog)

    def drop(self, partitions: Collection[TopicPartition] | None = None) -> None:
        """Revoked (or shut down: all). Not started means not done: the offsets stay
        uncommitted, and whoever owns the partition next takes the records."""
        self._backlog = deque(p for p in self._backlog if partitions is not None and p.tp not in partitions)
