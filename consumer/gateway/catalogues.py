"""The words of the page and of the downloads, one file per language: ``static/i18n/{ca,es,en}.json``.

Each catalogue holds the page's messages, the review reasons as a teacher
reads them, the CSV template, the export's column headers and the status
words. The page gets them put into it as served (``page.py``), the
downloads read them here (``exports.py``): each word is written once, in
data, not in code.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any

LANGS = ("ca", "es", "en")  # Catalan first: the default


def _read(lang: str) -> str:
    return files("consumer.gateway").joinpath(f"static/i18n/{lang}.json").read_text(encoding="utf-8")


def catalogues_json() -> str:
    """Every catalogue as one JSON object by language, read now (the page is read on each request:
    editing it needs no restart), safe inside a ``<script>`` element (no ``<``)."""
    text = json.dumps({lang: json.loads(_read(lang)) for lang in LANGS}, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c")


@cache
def catalogue(lang: str) -> dict[str, Any]:
    """One language's catalogue (``ValueError`` for a language the page does not speak)."""
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}")
    words: dict[str, Any] = json.loads(_read(lang))
    return words
