"""What a rebalance does to this consumer's work (the listener aiokafka calls).

Revoked: the partitions' jobs are aborted, their records forgotten (waiting,
or waiting to be sent again), what the aborted jobs already sent gets its
acknowledgements, the job state and the offsets of what is done are
written, and the partitions' job state is dropped: the next owner grades
only what was still in the engine. Assigned: the partitions' job state is
read before any of their records starts. Every step is bounded by
``REVOKE_TIMEOUT_S``: a rebalance must finish whatever the broker does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

if TYPE_CHECKING:
    from consumer.pipeline.admission import Admission
    from consumer.pipeline.checkpoint import Checkpoint
    from consumer.pipeline.inflight import InFlight
    from consumer.pipeline.jobstate import Ledger
    from consumer.pipeline.redelivery import Redeliveries

logger = logging.getLogger(__name__)


class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(
        self,
        *,
        inflight: InFlight,
        admission: Admission,
        redelivery: Redeliveries,
        checkpoint: Checkpoint,
        ledger: Ledger,
        timeout_s: float,
    ) -> None:
        self._inflight = inflight
        self._admission = admission
        self._redelivery = redelivery
        self._checkpoint = checkpoint
        self._ledger = ledger
        self._timeout_s = timeout_s
        self.member = False  # in the group, with an assignment (maybe empty)
        self._loaded: set[TopicPartition] = set()  # assigned partitions whose job state is read

    def loaded(self, tp: TopicPartition) -> bool:
        return tp in self._loaded

    async def on_partitions_revoked(self, revoked: Any) -> None:
        revoked = set(revoked)
        self.member = False
        lost = self._inflight.tasks(revoked)
        if lost:
            logger.info("revoked %d partitions: aborting %d jobs", len(revoked), len(lost))
        await self._inflight.cancel(lost, self._timeout_s)
        self._admission.drop(revoked)
        self._redelivery.forget(revoked)
        await self._checkpoint.release(revoked, self._timeout_s)
        self._loaded -= revoked

    async def on_partitions_assigned(self, assigned: Any) -> None:
        assigned = set(assigned)
        try:
            async with asyncio.timeout(self._timeout_s * 3):
                await self._ledger.load(tp.partition for tp in assigned)
        except (KafkaError, TimeoutError, LookupError) as exc:
            # Jobs are then graded from their first item: at-least-once, as before job state.
            logger.error("job state could not be loaded (%s): resumes will regrade", type(exc).__name__)
        self._loaded |= assigned
        self.member = True
        logger.info("assigned %d partitions", len(assigned))
