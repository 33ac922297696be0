"""``POST /evaluate``: a job in, produced to the requests topic (the prototype's answer).

The body is read within the gateway's body budget and size limit, and
validated as the consumer's intake would (``submit.py``). The same request
under the same ``job_id`` is the same job (200 with its status); another
request under it is a 409, and so is an id that was erased or that the
consumers still remember (they would never grade it: issue 28, finding 3).
A tenant's quotas (open jobs, waiting items) answer 429 with Retry-After.
"""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from consumer.gateway.auth import Caller
from consumer.gateway.deps import GatewayDep, WriterDep
from consumer.gateway.errors import Conflict, KafkaUnavailable, PayloadTooLarge, UnsupportedMediaType
from consumer.gateway.jobs import JobRecord
from consumer.gateway.limits import Limit, Refused, tenant_load
from consumer.gateway.middleware import audit_entry
from consumer.gateway.service import Gateway
from consumer.gateway.submit import NOT_JSON, Submission, is_json, parse_submission, read_limited

logger = logging.getLogger(__name__)
router = APIRouter()


@router.post("/evaluate")
async def evaluate(request: Request, caller: WriterDep, gateway: GatewayDep) -> JSONResponse:
    if not is_json(request.headers.get("content-type")):
        raise UnsupportedMediaType(NOT_JSON)
    settings = gateway.settings
    lease = gateway.bodies.lease()  # held until the request is produced: the parsed body is memory too
    try:
        body = await read_limited(
            request.stream(), request.headers.get("content-length"), settings.gateway.max_body_bytes, lease,
            settings.gateway.request_read_timeout_s,
        )  # fmt: skip
        submission = parse_submission(body, max_items=settings.jobs.max_items_per_job, tenant=caller.tenant)
        del body
        audit_entry(request).job_id = submission.job_id
        return await _submit(gateway, caller, submission)
    finally:
        lease.release()


async def _submit(gateway: Gateway, caller: Caller, submission: Submission) -> JSONResponse:
    if gateway.store.is_erased(submission.job_id):  # the consumers would not grade it (CANCEL_TTL_S)
        raise Conflict("job_id was erased; send a new job_id")
    existing = await gateway.find_for(caller, submission.job_id) if submission.named else None
    if existing is not None:
        if existing.request_sha256 != submission.request_sha256:
            raise Conflict("job_id already used by another request")
        return accepted(gateway, existing, caller)
    if submission.named and gateway.known is not None and submission.job_id in gateway.known:
        # This gateway forgot the job; the consumers did not: it would never be graded.
        raise Conflict("job_id already used by an earlier job the consumers still remember; send a new job_id")
    if caller.tenant is not None:
        check_quota(gateway, caller.tenant, submission.total_items)
    record = gateway.store.submitted(submission.job_id, submission.total_items, submission.request_sha256, time.time())
    try:
        await gateway.produce_request(submission)
    except Exception as exc:  # noqa: BLE001 - any produce failure: nothing was queued
        gateway.store.forget(submission.job_id)
        logger.warning("could not produce job %s: %s", submission.job_id, type(exc).__name__)
        if type(exc).__name__ == "MessageSizeTooLargeError":
            raise PayloadTooLarge("request larger than the Kafka message limit") from None
        raise KafkaUnavailable("Kafka unavailable; nothing was queued, retry later") from None
    logger.info("job %s queued: %d items", submission.job_id, submission.total_items)
    return accepted(gateway, record, caller)


def check_quota(gateway: Gateway, tenant: str, new_items: int) -> None:
    """Per-tenant quotas (429 + Retry-After): one school cannot fill the queue."""
    s = gateway.settings
    load = tenant_load(gateway.store, tenant)
    if load.open_jobs >= s.gateway.tenant_max_open_jobs:
        raise Refused(f"{load.open_jobs} jobs of this tenant are not finished yet (limit "
                      f"{s.gateway.tenant_max_open_jobs}); retry when one is", 30, Limit.TENANT_OPEN_JOBS)  # fmt: skip
    excess = load.waiting_items + new_items - s.gateway.tenant_max_waiting_items
    if excess > 0:
        retry_s = min(600.0, max(1.0, excess * gateway.store.seconds_per_item))
        detail = f"{load.waiting_items} items of this tenant are waiting (limit {s.gateway.tenant_max_waiting_items})"
        raise Refused(f"{detail}; retry later", retry_s, Limit.TENANT_WAITING_ITEMS)


def accepted(gateway: Gateway, record: JobRecord, caller: Caller) -> JSONResponse:
    """The prototype's answer to POST /evaluate, with a stream token for a tenant's job."""
    body: dict[str, object] = {
        "job_id": record.job_id,
        "total_items": record.total_items,
        "estimated_time_seconds": round(record.total_items * gateway.store.seconds_per_item, 1),
        "status": record.state.value,
        "stream_url": f"/stream/{record.job_id}",
    }
    if not caller.open:
        body["stream_token"] = gateway.tokens.issue(record.job_id, caller, time.time())
        body["stream_token_expires_in_s"] = int(gateway.tokens.ttl_s)
    return JSONResponse(body)
