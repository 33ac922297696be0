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

from consumer.gateway.catalogues import catalogues_json

_INLINE = {"script": re.compile(r"<script>(.*?)</script>", re.S), "style": re.compile(r"<style>(.*?)</style>", re.S)}


# Where the words go: a JSON data block, never run, so the CSP's script hashes do not cover it
# (and need no change when a word does); the page's script reads it before it shows anything.
CATALOGUES_SLOT = '<script type="application/json" id="catalogues"></script>'


def page_html() -> str:
    """The page with its catalogues (static/i18n/, ``catalogues.py``) put in."""
    html = files("consumer.gateway").joinpath("static/index.html").read_text(encoding="utf-8")
    if CATALOGUES_SLOT not in html:
        raise RuntimeError("static/index.html has no slot for its catalogues")
    filled = CATALOGUES_SLOT.replace("></", f">{catalogues_json()}</")
    return html.replace(CATALOGUES_SLOT, filled, 1)


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
