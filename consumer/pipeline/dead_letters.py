"""Dead-letter delivery that can never hold a partition back.

A rejected request is copied to the DLT whole (key, value, headers) with the
reason. Some copies cannot be produced at all: a value, key or headers over
the producer's or the broker's size limit. Retrying those cannot succeed and
would keep the partition's commit point behind them forever (every restart
would then grade every job behind it again), so each failure that cannot
succeed falls back to a smaller dead letter:

    whole record -> without the value -> coordinates and reason only

The last form has no key, no original headers and no value: an operator
finds the request in the source topic by ``texteval.original.*``.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError

from consumer.pipeline.intake import RejectReason
from consumer.pipeline.sinks import DeadLetterForm, DeliveryFailed

if TYPE_CHECKING:
    from consumer.metrics import Metrics
    from consumer.pipeline.intake import Rejection
    from consumer.pipeline.sinks import Sinks

logger = logging.getLogger(__name__)

# Errors about the dead letter itself (its size or shape): the same message
# fails the same way every time, so they are never retried.
UNSENDABLE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)


class DeadLetters:
    def __init__(self, sinks: Sinks, metrics: Metrics) -> None:
        self._sinks = sinks
        self._metrics = metrics
        metrics.expect(metrics.dead_letters, RejectReason)
        metrics.expect(
            metrics.dead_letters_reduced, [form for form in DeadLetterForm if form is not DeadLetterForm.WHOLE]
        )

    def deliver(self, record: Any, rejection: Rejection) -> Coroutine[Any, Any, None]:
        """A record's dead letter: logged (its coordinates and reason, never its value) and counted
        now; the coroutine returned sends it (``_send``)."""
        logger.warning("dead letter: %s:%s:%s reason=%s", record.topic, record.partition, record.offset,
                       rejection.reason)  # fmt: skip
        self._metrics.dead_letters.labels(reason=rejection.reason.value).inc()
        return self._send(record, rejection)

    async def _send(self, record: Any, rejection: Rejection) -> None:
        """Send the dead letter in the largest form the broker takes; wait for its ack.

        Other failures (broker unreachable past the producer's retries) are
        raised as ``DeliveryFailed``: the caller retries those later, since they can succeed.
        """
        forms = [DeadLetterForm.WHOLE, DeadLetterForm.WITHOUT_VALUE, DeadLetterForm.COORDINATES]
        if record.value is None:
            forms.remove(DeadLetterForm.WITHOUT_VALUE)  # nothing to drop
        for form in forms:
            try:
                await (await self._sinks.dead_letter(record, rejection, form=form))
            except DeliveryFailed as exc:
                if not isinstance(exc.__cause__, UNSENDABLE) or form is DeadLetterForm.COORDINATES:
                    raise
                logger.warning(
                    "dead letter %s:%d:%d unsendable as %s (%s); trying a smaller form",
                    record.topic, record.partition, record.offset, form.value, type(exc.__cause__).__name__,
                )  # fmt: skip
                continue
            if form is not DeadLetterForm.WHOLE:
                self._metrics.dead_letters_reduced.labels(form=form).inc()
            return
