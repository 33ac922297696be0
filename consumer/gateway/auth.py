"""API keys: who is calling (a tenant, an operator, or anyone on an open gateway).

Contract 1.2, "Tenants": ``GATEWAY_API_KEYS`` holds ``tenant=key`` entries
(also one per line in ``GATEWAY_API_KEYS_FILE``), ``GATEWAY_ADMIN_KEYS``
operators' keys. Keys are kept only as SHA-256 digests and compared in
constant time against every configured key (no early exit), so neither the
comparison's timing nor a memory dump gives a key away. Keys are never
logged: a caller is named by its key id, a short prefix of the digest.

Settings that would silently widen access are refused at start-up: an entry
without ``tenant=`` (once it meant "sees every job"), a key shorter than
``MIN_KEY_CHARS``, one key for two tenants.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from consumer.contract import JOB_ID_PATTERN, TENANT_PATTERN
from consumer.kafka import is_loopback as is_loopback  # re-exported: the gateway's routes use it
from consumer.settings import Settings
from consumer.tenants import tenant_of

logger = logging.getLogger(__name__)

# 32 characters of a random key (base64 or hex) are 128+ bits: not guessable.
MIN_KEY_CHARS = 32
KEY_ID_HEX_CHARS = 10
_TENANT = re.compile(TENANT_PATTERN)
_JOB_ID = re.compile(JOB_ID_PATTERN)


class GatewaySetupError(RuntimeError):
    """Settings the gateway refuses to start with (the message names the setting)."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request comes from. ``tenant`` None and not ``admin``: an open gateway."""

    key_id: str  # a digest prefix, or "open"
    tenant: str | None = None
    admin: bool = False

    @property
    def open(self) -> bool:
        return self.tenant is None and not self.admin

    @property
    def limit_key(self) -> str:
        """Whose share of the per-caller limits (writes, streams) a request takes: the school's
        (every key of a tenant shares one), or an operator key's own."""
        return f"tenant:{self.tenant}" if self.tenant is not None else f"key:{self.key_id}"

    def sees(self, job_id: str) -> bool:
        """May this caller know that ``job_id`` exists? A tenant: only its own
        jobs (an id without ``/`` belongs to no tenant); operators and an open
        gateway: every job."""
        if self.tenant is None:
            return True
        return tenant_of(job_id) == self.tenant


OPEN = Caller("open")


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def key_id_of(key_digest: bytes) -> str:
    return key_digest.hex()[:KEY_ID_HEX_CHARS]


def parse_entries(entries: Sequence[str]) -> list[tuple[str, str]]:
    """(tenant, key) of each ``tenant=key`` entry; GatewaySetupError names the bad one by position."""
    parsed = []
    for number, entry in enumerate(entries, start=1):
        tenant, sep, key = entry.partition("=")
        tenant, key = tenant.strip(), key.strip()
        if not sep:
            raise GatewaySetupError(
                f"GATEWAY_API_KEYS entry {number} has no tenant: write it as tenant=key "
                '(e.g. GATEWAY_API_KEYS="school-42=<key>"); operators\' keys go in GATEWAY_ADMIN_KEYS'
            )
        if not _TENANT.fullmatch(tenant):
            raise GatewaySetupError(f"GATEWAY_API_KEYS entry {number}: the tenant must match {TENANT_PATTERN} (no '/')")
        parsed.append((tenant, key))
    return parsed


class ApiKeys:
    def __init__(self, tenant_keys: Sequence[tuple[str, str]], admin_keys: Sequence[str]) -> None:
        self._callers: list[tuple[bytes, Caller]] = []
        seen: dict[bytes, str] = {}
        named = [(f"tenant {t}", k, t) for t, k in tenant_keys] + [("an admin key", k, None) for k in admin_keys]
        for where, key, tenant in named:
            if len(key) < MIN_KEY_CHARS:
                raise GatewaySetupError(
                    f"{'GATEWAY_ADMIN_KEYS' if tenant is None else 'GATEWAY_API_KEYS'}: the key of {where} is "
                    f"shorter than {MIN_KEY_CHARS} characters (generate one: openssl rand -base64 32)"
                )
            d = digest(key)
            if d in seen:
                raise GatewaySetupError(f"the same key is given for {seen[d]} and {where}: one key, one holder")
            seen[d] = where
            self._callers.append((d, Caller(key_id_of(d), tenant=tenant, admin=tenant is None)))

    @classmethod
    def from_entries(cls, entries: Sequence[str], admin_keys: Sequence[str]) -> ApiKeys:
        return cls(parse_entries(entries), admin_keys)

    @property
    def required(self) -> bool:
        return bool(self._callers)

    def key_digests(self) -> list[bytes]:
        """For deriving the stream tokens' secret (the same on every replica with the same keys)."""
        return sorted(d for d, _ in self._callers)

    def identify(self, authorization: str | None, query_token: str | None = None) -> Caller | None:
        """The caller, or None for a missing or wrong key. ``query_token``
        (``?access_token=``) is kept for older clients; browsers use the
        job-scoped stream token instead (tokens.py)."""
        if not self._callers:
            return OPEN
        token = query_token
        if authorization is not None:
            scheme, _, value = authorization.partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
        if not token:
            return None
        candidate = digest(token)
        found: Caller | None = None
        for key_digest, caller in self._callers:  # every key, no early exit
            if hmac.compare_digest(candidate, key_digest):
                found = caller
        return found

    def allows(self, authorization: str | None, query_token: str | None = None) -> bool:
        return self.identify(authorization, query_token) is not None


def loggable_id(job_id: str) -> str:
    """A job id for a log line: as is when it is a valid id, else a marker
    (a path may carry newlines or anything else an attacker likes)."""
    return job_id if _JOB_ID.fullmatch(job_id) else f"<invalid id, {len(job_id)} chars>"


def check_exposure(host: str, keys: ApiKeys, allow_anonymous: bool) -> None:
    """An open gateway (no keys) only on loopback, unless explicitly allowed."""
    if not keys.required and not allow_anonymous and not is_loopback(host):
        raise GatewaySetupError(
            f"refusing to serve without API keys on {host}: set GATEWAY_API_KEYS, "
            "or GATEWAY_ALLOW_ANONYMOUS=true to serve an open gateway on purpose"
        )


def keys_from(settings: Settings) -> ApiKeys:
    """The keys the settings give (GatewaySetupError for any it refuses)."""
    path = settings.gateway.api_keys_file
    if path is not None and not path.exists() and settings.gateway.generate_key_for:
        generate_key_file(path, settings.gateway.generate_key_for)
    try:
        entries = settings.gateway.gateway_keys()
    except OSError as exc:
        raise GatewaySetupError(f"GATEWAY_API_KEYS_FILE: cannot read {path} ({exc.strerror})") from None
    return ApiKeys.from_entries(entries, settings.gateway.gateway_admin_key_list())


def generate_key_file(path: Path, tenant: str) -> None:
    """A demo's keys without a default: one fresh ``tenant=key`` entry, readable by its owner only."""
    if not _TENANT.fullmatch(tenant):
        raise GatewaySetupError(f"GATEWAY_GENERATE_KEY_FOR: the tenant must match {TENANT_PATTERN}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f"{tenant}={secrets.token_urlsafe(32)}\n")
    logger.warning("generated an API key for tenant %s in %s (read it there; it is not logged)", tenant, path)
