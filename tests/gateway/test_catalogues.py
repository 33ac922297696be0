"""The page's words live in static/i18n/{ca,es,en}.json: one shape per language, put into the page as served."""

from __future__ import annotations

import json
import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

from consumer.gateway.catalogues import LANGS, catalogue, catalogues_json
from consumer.gateway.page import page_headers, page_html

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "consumer" / "gateway" / "static"


def _shape(value: object) -> object:
    if isinstance(value, dict):
        return {key: _shape(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [_shape(inner) for inner in value]
    return type(value).__name__


@pytest.mark.parametrize("lang", LANGS[1:])
def test_every_language_has_the_catalan_catalogues_keys_in_its_order(lang: str) -> None:
    catalan = catalogue("ca")
    assert _shape(catalogue(lang)) == _shape(catalan)
    assert list(catalogue(lang)["export_headers"]) == list(catalan["export_headers"])  # the columns' order


def test_a_language_the_page_does_not_speak_is_refused() -> None:
    with pytest.raises(ValueError, match="lang must be one of"):
        catalogue("fr")


def test_the_served_page_carries_every_catalogue_in_a_data_block_its_csp_does_not_run() -> None:
    html = page_html()
    block = re.search(r'<script type="application/json" id="catalogues">(.*?)</script>', html, re.S)
    assert block is not None
    assert json.loads(block.group(1)) == {lang: catalogue(lang) for lang in LANGS}
    # The script hashes cover the page's own script only: a word changed changes no hash.
    assert page_headers(html)["Content-Security-Policy"].count("'sha256-") == 2  # one script, one style


def test_a_less_than_sign_in_a_word_cannot_end_the_data_block() -> None:
    assert "<" not in catalogues_json()


def test_the_catalogues_are_package_data() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for path in (STATIC / "i18n").iterdir():
        relative = path.relative_to(STATIC.parent).as_posix()
        assert any(fnmatch(relative, pattern) for pattern in patterns["consumer.gateway"]), relative
