"""API keys: ``Authorization: Bearer <key>``, and who may run without any.

Keys are kept only as SHA-256 digests and compared in constant time against
every configured key (no early exit), so neither the comparison's timing
nor a memory dump gives a key away. Keys are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Sequence


class GatewaySetupError(RuntimeError):
    """Settings the gateway refuses to start with (the message names the setting)."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeys:
    def __init__(self, keys: Sequence[str]) -> None:
        self._digests = [_digest(k) for k in keys]

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def allows(self, authorization: str | None, query_token: str | None = None) -> bool:
        """``query_token`` is for browsers' EventSource, which cannot send headers."""
        if not self._digests:
            return True
        token = query_token
        if authorization is not None:
            scheme, _, value = authorization.partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
        if not token:
            return False
        candidate = _digest(token)
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(candidate, digest)
        return matched


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, keys: ApiKeys, allow_anonymous: bool) -> None:
    """An open gateway (no keys) only on loopback, unless explicitly allowed."""
    if not keys.required and not allow_anonymous and not is_loopback(host):
        raise GatewaySetupError(
            f"refusing to serve without API keys on {host}: set GATEWAY_API_KEYS, "
            "or GATEWAY_ALLOW_ANONYMOUS=true to serve an open gateway on purpose"
        )
