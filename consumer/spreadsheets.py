"""Results files a teacher can open: CSV that a spreadsheet reads as text.

Used by every writer of a results CSV (the gateway's ``/jobs/{id}/results``
and ``consumer.tools.files``), so there is one rule:

- **No formulas** (OWASP "CSV injection"): a cell that begins with ``=``,
  ``+``, ``-``, ``@``, a tab or a carriage return is prefixed with a single
  quote, which spreadsheets show as text and do not display. Feedback is
  model output and ``id_alumno`` is any text, so either could be
  ``=HYPERLINK(...)``. A cell that itself begins with a quote gets one more,
  so ``restore_cell`` undoes the rule exactly for programs that read the
  file back. Spreadsheets skip leading blanks and invisible characters
  before they look for a formula, and read fullwidth signs as ASCII ones
  (LibreOffice, Excel's IME input), so a cell that begins with any
  whitespace (space, line feed, no-break space), a format character (the
  BOM, the right-to-left override and the other bidi controls, zero-width
  ones) or a fullwidth ``＝＋－＠`` is quoted too. NUL characters are
  removed (they end a cell in some readers and hide what follows).
- **A UTF-8 byte-order mark** first: without it Excel on Windows reads the
  file as the local code page and every ``à``, ``ç``, ``l·l`` is garbled.
- **Owner-only files** (0600) where a file is written to disk: the rows are
  minors' grades.
"""

from __future__ import annotations

import csv
import io
import os
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

BOM = "\ufeff"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Fullwidth = + - @ (a spreadsheet may read them as the ASCII signs).
FULLWIDTH_FORMULA_STARTS = ("\uff1d", "\uff0b", "\uff0d", "\uff20")
_QUOTE = "'"


def needs_quote(text: str) -> bool:
    """Would a spreadsheet possibly read ``text`` as a formula (or is it already quoted)?"""
    if not text:
        return False
    first = text[0]
    return (
        text.startswith((*FORMULA_STARTS, *FULLWIDTH_FORMULA_STARTS, _QUOTE))
        or first.isspace()
        or unicodedata.category(first) in ("Cf", "Cc", "Zs", "Zl", "Zp")
    )


def safe_cell(value: object) -> object:
    """``value`` as a spreadsheet will read it as text (numbers and None
    unchanged; a bool as JSON spells it, ``true``/``false``, as the JSONL
    file beside it says, not Python's ``True``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        value = value.replace("\x00", "")
        return _QUOTE + value if needs_quote(value) else value
    return value


def restore_cell(text: str) -> str:
    """The inverse of ``safe_cell`` for a cell read back from such a file (but for NULs, which are gone)."""
    if text.startswith(_QUOTE) and needs_quote(text[1:]):
        return text[1:]
    return text


def csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> str:
    """A whole CSV: the BOM, the header, one row per mapping (extra keys ignored), every cell safe."""
    buffer = io.StringIO()
    buffer.write(BOM)
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([safe_cell(row.get(column)) for column in columns])
    return buffer.getvalue()


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600), also
    when the file already exists with wider permissions."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
