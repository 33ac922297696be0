"""A caller's jobs: the list, one job's status, a fresh stream token, cancel and erase.

Routes with ``{job_id:path}`` (ids of a tenant hold a ``/``) match
everything after ``/jobs/``: ``app.create_app`` includes this router after
the results and corrections routers, whose longer paths must match first.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from consumer.erasure import erase_answer
from consumer.gateway.auth import Caller
from consumer.gateway.deps import CallerDep, GatewayDep, JobDep, ReadableJobDep, WriterDep
from consumer.gateway.errors import Conflict, JobNotFound, KafkaUnavailable
from consumer.gateway.jobs import status_body
from consumer.gateway.middleware import audit_entry
from consumer.gateway.service import Gateway

logger = logging.getLogger(__name__)
router = APIRouter()


@router.get("/jobs")
async def list_jobs(
    caller: CallerDep,
    gateway: GatewayDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[str | None, Query(max_length=128)] = None,
) -> JSONResponse:
    """The caller's jobs (an operator's or an open gateway's: all), by job id,
    a page at a time: ``next`` is the ``after`` of the next page."""
    mine = sorted((r for r in gateway.store.all_jobs() if caller.sees(r.job_id)), key=lambda r: r.job_id)
    if after is not None:
        mine = [r for r in mine if r.job_id > after]
    page = mine[:limit]
    more = len(mine) > limit
    return JSONResponse({"jobs": [status_body(r) for r in page], "next": page[-1].job_id if more else None})


@router.post("/jobs/{job_id:path}/stream_token")
async def stream_token(job_id: str, caller: CallerDep, gateway: GatewayDep, record: JobDep) -> JSONResponse:
    """A fresh stream token (the page's, when the one it had expired); ``record``: 404 unless the caller's."""
    if caller.open:
        return JSONResponse({"stream_token": None})
    return JSONResponse({"stream_token": gateway.tokens.issue(job_id, caller, time.time()),
                         "stream_token_expires_in_s": int(gateway.tokens.ttl_s)})  # fmt: skip


@router.get("/jobs/{job_id:path}")
async def job_status(record: ReadableJobDep) -> JSONResponse:
    return JSONResponse(status_body(record))


@router.delete("/jobs/{job_id:path}")
async def cancel(request: Request, job_id: str, caller: WriterDep, gateway: GatewayDep,
                 erase: bool = False) -> JSONResponse:  # fmt: skip
    """Cancel a queued or running job (202), or with ``?erase=true`` erase it."""
    if erase:
        audit_entry(request).note = "erase=true"
        return await _erase(gateway, caller, job_id)
    record = await gateway.find_for(caller, job_id)
    if record is None:
        raise JobNotFound()
    if record.finished:
        raise Conflict(f"job already {record.state.value}")
    try:
        await gateway.produce_cancel(job_id, caller)
    except Exception as exc:  # noqa: BLE001 - any produce failure: nothing was sent
        logger.warning("could not produce the cancel of job %s: %s", job_id, type(exc).__name__)
        raise KafkaUnavailable("Kafka unavailable; retry later") from None
    logger.info("cancel requested for job %s", job_id)
    return JSONResponse({"job_id": job_id, "status": "cancel_requested"}, status_code=202)


async def _erase(gateway: Gateway, caller: Caller, job_id: str) -> JSONResponse:
    """``?erase=true`` (contract 1.2): the owner's or an operator's, finished or not, and also
    when this gateway no longer holds the job (its data may still be in the job state and the
    topics). Another tenant's job is unknown, as on every route. The audit line says erase."""
    if not caller.sees(job_id):
        raise JobNotFound()
    try:
        await gateway.produce_erase(job_id, caller)
    except Exception as exc:  # noqa: BLE001 - any produce failure: the client asks again
        logger.warning("could not produce the erase of job %s: %s", job_id, type(exc).__name__)
        raise KafkaUnavailable("Kafka unavailable; nothing was erased, retry later") from None
    logger.info("erase requested for job %s", job_id)
    return JSONResponse(erase_answer(gateway.settings, job_id, time.time()), status_code=202)
