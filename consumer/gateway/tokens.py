"""Job-scoped stream tokens: what a browser puts in a URL instead of its key.

``EventSource`` cannot send headers, and a key in ``?access_token=`` ends up
in proxy logs and download histories for as long as the key lives. ``POST
/evaluate`` (and ``POST /jobs/{id}/stream_token``) answer a token that reads
one job (its stream, status and results) for ``GATEWAY_STREAM_TOKEN_TTL_S``:
``<payload>.<HMAC-SHA256>``, both base64url, the payload naming the job, the
caller and the expiry.

The HMAC secret is derived from the configured keys' digests, so every
replica with the same keys accepts the same tokens (a browser that
reconnects to another one keeps reading) and changing the keys revokes
every token. An open gateway issues none (it needs none).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence

from consumer.gateway.auth import Caller

_CONTEXT = b"texteval gateway stream token v1\0"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class StreamTokens:
    def __init__(self, key_digests: Sequence[bytes], ttl_s: float) -> None:
        self._secret = hashlib.sha256(_CONTEXT + b"".join(key_digests)).digest()
        self.ttl_s = ttl_s

    def issue(self, job_id: str, caller: Caller, now_s: float) -> str:
        claims = {"j": job_id, "k": caller.key_id, "t": caller.tenant, "a": caller.admin, "e": int(now_s + self.ttl_s)}
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}"

    def verify(self, token: str, job_id: str, now_s: float) -> Caller | None:
        """The caller the token was issued to, if it is ours, unexpired and for ``job_id``."""
        payload, sep, signature = token.partition(".")
        if not sep or len(token) > 2048 or not hmac.compare_digest(self._sign(payload), signature):
            return None
        try:
            claims = json.loads(_unb64(payload))
            if claims["j"] != job_id or now_s >= float(claims["e"]):
                return None
            return Caller(str(claims["k"]), tenant=claims["t"], admin=bool(claims["a"]))
        except (ValueError, KeyError, TypeError):
            return None

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode("ascii", "replace"), hashlib.sha256).digest())
