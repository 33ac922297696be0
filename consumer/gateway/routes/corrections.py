"""``POST /jobs/{job_id}/corrections``: teachers' corrections (contract 1.2/1.3).

The rules (who may correct, what an entry may say, the decision records,
agreement) are ``consumer/gateway/corrections.py``'s; this is the route:
the key and the write limit, the job (404), an operator refused (403), a
JSON body within the limits, then every correction and its decision record
produced to Kafka, keyed by ``job_id`` (202 with the count).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from consumer.contract import CorrectionRecord
from consumer.corrections import Correction
from consumer.gateway.corrections import (
    agreement_of,
    by_of,
    decision_records,
    model_grades,
    parse_corrections,
)
from consumer.gateway.deps import GatewayDep, JobDep, WriterDep
from consumer.gateway.errors import Forbidden, InvalidInput, KafkaUnavailable, UnsupportedMediaType
from consumer.gateway.service import Gateway
from consumer.gateway.submit import NOT_JSON, is_json, read_limited

logger = logging.getLogger(__name__)
router = APIRouter()


@router.post("/jobs/{job_id:path}/corrections")
async def post_corrections(
    request: Request, job_id: str, caller: WriterDep, record: JobDep, gateway: GatewayDep
) -> JSONResponse:
    if caller.admin:
        raise Forbidden("corrections come from the job's tenant, not an operator")
    if not is_json(request.headers.get("content-type")):
        raise UnsupportedMediaType(NOT_JSON)
    settings = gateway.settings
    lease = gateway.bodies.lease()
    try:
        body = await read_limited(
            request.stream(), request.headers.get("content-length"), settings.gateway.max_body_bytes, lease,
            settings.gateway.request_read_timeout_s,
        )  # fmt: skip
    finally:
        lease.release()  # a corrections list is small once parsed (at most the per-request cap)
    parsed = parse_corrections(body, job_id, max_items=settings.jobs.max_items_per_job, total_items=record.total_items,
                               max_entries=settings.gateway.max_corrections_per_request)  # fmt: skip
    if not all(isinstance(c, Correction) for c in parsed):
        raise InvalidInput(parsed)
    corrections = [c for c in parsed if isinstance(c, Correction)]
    # Read before the awaits below: the record may be dropped from memory meanwhile.
    known = model_grades(record)
    applied = gateway.applied.of(record)
    before = dict(applied)
    records = decision_records(corrections, known, applied, by_of(caller))
    try:
        await _produce(gateway, job_id, corrections, records)
    except Exception as exc:  # noqa: BLE001 - any produce failure: the client sends the list again
        # Some may be written: sending them again applies them again (the last applied counts).
        applied.clear()
        applied.update(before)
        logger.warning("could not produce corrections of job %s: %s", job_id, type(exc).__name__)
        raise KafkaUnavailable("Kafka unavailable; send the corrections again later") from None
    logger.info("job %s: %d corrections produced, with their decision records", job_id, len(corrections))
    for correction in corrections:
        gateway.metrics.corrections.labels(agreement_of(known.get(correction.item_index), correction.nota).value).inc()
    return JSONResponse({"job_id": job_id, "accepted": len(corrections)}, status_code=202)


async def _produce(
    gateway: Gateway, job_id: str, corrections: Sequence[Correction], records: Sequence[CorrectionRecord]
) -> None:
    """Each correction, then its decision record, all sent before any acknowledgement is awaited."""
    topics, key, acks = gateway.settings, job_id.encode(), []
    for correction, decision in zip(corrections, records, strict=True):
        value = correction.model_dump_json().encode()
        acks.append(await gateway.producer.send(topics.kafka.corrections_topic, value=value, key=key))
        value = decision.model_dump_json().encode()
        acks.append(await gateway.producer.send(topics.kafka.decisions_topic, value=value, key=key))
    for ack in acks:
        await ack
