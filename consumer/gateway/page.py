"""``GET /``: one static page (HTML + JS, no build step) to submit a CSV and
watch its grades arrive. Read from the package on each request: it is small,
and editing it needs no restart."""

from __future__ import annotations

from importlib.resources import files


def page_html() -> str:
    return files("consumer.gateway").joinpath("static/index.html").read_text(encoding="utf-8")
