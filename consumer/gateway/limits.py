"""Abuse limits (OWASP API4, unrestricted resource consumption): what one
key, one client address or one tenant may take of a gateway.

- ``RateLimiter``: a token bucket per key (writes) or per client address
  (requests with a missing or wrong key: key guessing). An empty bucket is
  a 429 with ``Retry-After`` = the seconds until the next token.
- ``StreamSlots``: open SSE streams, capped in total and per key (each
  stream holds a task and socket buffers; the pod's memory limit would
  otherwise end every stream at once).
- ``BodyBudget``: request body bytes held at once, across all requests.
- ``tenant_load``: a tenant's open jobs and waiting items, from the job
  store, for the per-tenant quotas.

All in memory, per replica: N replicas allow N times the totals (say so in
the settings you choose). Buckets are kept for at most ``max_keys`` keys;
past that the least recently used go (a fresh bucket is full, so an
attacker who cycles addresses gains no more than the burst each).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from consumer.gateway.jobs import JobStore
from consumer.tenants import tenant_of


class Limit(StrEnum):
    """The `limit` label of texteval_gateway_limited: which limit refused a request (never a tenant or a key)."""

    STREAMS = "streams"
    WRITES = "writes"
    AUTH_FAILURES = "auth_failures"
    TENANT_OPEN_JOBS = "tenant_open_jobs"
    TENANT_WAITING_ITEMS = "tenant_waiting_items"
    INFLIGHT_BODY_BYTES = "inflight_body_bytes"  # the gateway's own capacity: a 503


class Refused(Exception):
    """A request over a limit: 429 (or ``status``, 503 for the gateway's own capacity) with Retry-After."""

    def __init__(self, detail: str, retry_after_s: float, limit: Limit, status: int = 429) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after_s = max(1, math.ceil(retry_after_s))
        self.limit = limit  # a label of texteval_gateway_limited
        self.status = status


class BodyBudget:
    """Bytes of request bodies held at once, across every request (``GATEWAY_MAX_INFLIGHT_BODY_BYTES``).

    A body is parsed into a few times its size (the models, the message produced), so the
    memory a gateway needs grows with the bodies it holds at once, whoever sends them: ten
    16 MB bodies took a gateway past its 512 MiB. Each body's bytes are taken as they arrive
    (all of a declared ``Content-Length`` at once) and given back when its request ends; past
    the budget the request gets 503 + Retry-After and what it took is given back.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0

    def lease(self) -> Lease:
        return Lease(self)


class Lease:
    """One request's share of a ``BodyBudget``; ``release`` gives it all back (once)."""

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.held = 0

    def take(self, n_bytes: int) -> None:
        if self._budget.used + n_bytes > self._budget.max_bytes:
            self.release()
            raise Refused("the gateway is reading too many request bodies at once; retry later", 5,
                          Limit.INFLIGHT_BODY_BYTES, status=503)  # fmt: skip
        self._budget.used += n_bytes
        self.held += n_bytes

    def release(self) -> None:
        self._budget.used -= self.held
        self.held = 0


@dataclass
class _Bucket:
    tokens: float
    updated_s: float


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._rate_per_s = rate_per_s
        self._burst = burst
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _bucket(self, key: str) -> _Bucket:
        now_s = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self._burst), now_s)
            while len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            bucket.tokens = min(float(self._burst), bucket.tokens + (now_s - bucket.updated_s) * self._rate_per_s)
            bucket.updated_s = now_s
            self._buckets.move_to_end(key)
        return bucket

    def wait_s(self, key: str) -> float:
        """0 when ``key`` has a token now, else the seconds until it will (nothing taken)."""
        bucket = self._bucket(key)
        return 0.0 if bucket.tokens >= 1 else (1 - bucket.tokens) / self._rate_per_s

    def take(self, key: str, what: str, limit: Limit) -> None:
        """Take a token or raise Refused."""
        bucket = self._bucket(key)
        if bucket.tokens < 1:
            raise Refused(f"too many {what}; retry later", (1 - bucket.tokens) / self._rate_per_s, limit)
        bucket.tokens -= 1


class StreamSlots:
    def __init__(self, max_total: int, max_per_key: int) -> None:
        self._max_total = max_total
        self._max_per_key = max_per_key
        self.total = 0
        self._per_key: dict[str, int] = {}
        self.refused = 0

    def acquire(self, key_id: str | None) -> Slot:
        """A slot for one stream; ``key_id`` None (an open gateway) counts in the total only."""
        if self.total >= self._max_total:
            self.refused += 1
            raise Refused("too many open streams on this gateway; retry later", 5, Limit.STREAMS)
        if key_id is not None and self._per_key.get(key_id, 0) >= self._max_per_key:
            self.refused += 1
            raise Refused("too many open streams for this school; close some first", 5, Limit.STREAMS)
        self.total += 1
        if key_id is not None:
            self._per_key[key_id] = self._per_key.get(key_id, 0) + 1
        return Slot(self, key_id)

    def _release(self, key_id: str | None) -> None:
        self.total -= 1
        if key_id is not None:
            left = self._per_key[key_id] - 1
            if left:
                self._per_key[key_id] = left
            else:
                del self._per_key[key_id]


class Slot:
    """Released once, however often ``release`` is called."""

    def __init__(self, slots: StreamSlots, key_id: str | None) -> None:
        self._slots: StreamSlots | None = slots
        self._key_id = key_id

    def release(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots._release(self._key_id)


@dataclass(frozen=True, slots=True)
class TenantLoad:
    open_jobs: int
    waiting_items: int


def tenant_load(store: JobStore, tenant: str) -> TenantLoad:
    """Jobs of ``tenant`` not finished, and their items not graded yet."""
    jobs = [r for r in store.active_jobs() if tenant_of(r.job_id) == tenant]
    return TenantLoad(len(jobs), sum(max(0, r.total_items - len(r.seen)) for r in jobs))
