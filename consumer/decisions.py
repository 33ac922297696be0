"""Decision records (contract 1.3, topic ``evaluation.decisions``): the key, the HMAC, reading them back.

A record says which model, prompt and distribution gave a released grade,
and who changed it when, for as long as an appeal or an inspector may ask
(``DECISIONS_RETENTION_MS``, 183 days): far longer than the texts are kept,
so a record holds no text, no feedback and no ``id_alumno``. The answer is
named by ``answer_hmac``, an HMAC-SHA-256 under the deployment's key: the
school recomputes it on its own copy to show which text was graded, and
without the key nobody can test a guess.

It lives at the ground layer: the consumer writes grade records, the gateway
and ``texteval correct`` write correction records, the erase tools write
``erased``, and ``explain``, ``agreement`` and ``export-training`` read them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable
from datetime import datetime

from pydantic import TypeAdapter, ValidationError

from consumer.contract import (
    CorrectionRecord,
    DecisionRecord,
    ErasedRecord,
    GradeRecord,
    utc_now,
)
from consumer.kafka import loopback_brokers
from consumer.settings import Settings
from consumer.tenants import tenant_of

logger = logging.getLogger(__name__)

# Development only (every broker on loopback): records stay checkable within
# one developer's machine; a deployment sets its own DECISIONS_HMAC_KEY.
DEVELOPMENT_HMAC_KEY = b"texteval-development-decisions-key"
MIN_KEY_CHARS = 32

DECISION_RECORD: TypeAdapter[GradeRecord | CorrectionRecord | ErasedRecord] = TypeAdapter(DecisionRecord)


class DecisionsSetupError(ValueError):
    """A setting the service refuses to start with (the message names it, never its value)."""


def hmac_key(settings: Settings) -> bytes:
    """DECISIONS_HMAC_KEY, or the development key when every broker is on loopback; refused otherwise."""
    key = settings.privacy.decisions_hmac_key.get_secret_value()
    if key:
        if len(key) < MIN_KEY_CHARS:
            raise DecisionsSetupError(f"DECISIONS_HMAC_KEY must be at least {MIN_KEY_CHARS} characters")
        return key.encode("utf-8")
    if loopback_brokers(settings.kafka.bootstrap_servers):
        logger.warning("DECISIONS_HMAC_KEY unset: decision records use the development key (brokers on loopback)")
        return DEVELOPMENT_HMAC_KEY
    raise DecisionsSetupError(
        "DECISIONS_HMAC_KEY is required when the brokers are not on loopback: decision records name each "
        "answer by its HMAC under it (generate one: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
    )


def answer_hmac(key: bytes, respuesta: str) -> str:
    """The record's ``answer_hmac``: of the text exactly as the student wrote it (UTF-8)."""
    return hmac.new(key, respuesta.encode("utf-8"), hashlib.sha256).hexdigest()


def parse_record(value: bytes | None) -> GradeRecord | CorrectionRecord | ErasedRecord | None:
    """One record from the topic, or None for anything else (a reader never stops on a bad record)."""
    if not value:
        return None
    try:
        return DECISION_RECORD.validate_json(value)
    except ValidationError:
        return None


def erased_record(job_id: str, *, at: datetime | None = None) -> ErasedRecord:
    return ErasedRecord(job_id=job_id, tenant=tenant_of(job_id), at=at or utc_now())


def erased_jobs(records: Iterable[GradeRecord | CorrectionRecord | ErasedRecord | None]) -> set[str]:
    """The job ids an ``erased`` record names: every reader of corrections skips them."""
    return {r.job_id for r in records if isinstance(r, ErasedRecord)}
