"""``GET /``: one static page (HTML + JS, no build step) to submit a CSV and
watch its grades arrive. Read from the package on each request: it is small,
and editing it needs no restart.

Contract 1.2 on the page: rows the model was unsure of (``needs_review``)
are marked and can be sorted least sure first; each grade sits beside the
answer it was given for (kept in the browser from the file the teacher
submitted, joined by ``item_index``; never sent again); a grade is
corrected in place (``POST /jobs/{id}/corrections`` with the key); an
inline SVG counts the class's grades. All of it built with DOM calls and
attributes, no ``style=""`` and no handlers in the markup, so the CSP below
stays hash-only.

Its headers lock it down: a Content-Security-Policy that allows only the
page's own inline script and style (by their SHA-256, computed from the
page as served, so an edit cannot leave them stale) and requests to the
gateway itself; no framing; no MIME sniffing; no Referer (URLs may carry a
stream token)."""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files

_INLINE = {"script": re.compile(r"<script>(.*?)</script>", re.S), "style": re.compile(r"<style>(.*?)</style>", re.S)}


def page_html() -> str:
    return files("consumer.gateway").joinpath("static/index.html").read_text(encoding="utf-8")


def _hashes(pattern: re.Pattern[str], html: str) -> str:
    digests = (hashlib.sha256(m.encode("utf-8")).digest() for m in pattern.findall(html))
    return " ".join(f"'sha256-{base64.b64encode(d).decode()}'" for d in digests)


def page_headers(html: str) -> dict[str, str]:
    csp = (
        "default-src 'none'; "
        f"script-src {_hashes(_INLINE['script'], html)}; "
        f"style-src {_hashes(_INLINE['style'], html)}; "
        "connect-src 'self'; img-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": csp,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
