"""`texteval --help` is written for the people who run it, not for developers."""

from __future__ import annotations

import pytest

from consumer.tools.cli import parse


def test_top_level_help_describes_the_tool_and_shows_the_common_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(["--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert "Grade Catalan student answers" in shown
    for example in ("texteval demo", "texteval submit texts.csv --follow", "texteval verify", "texteval grade"):
        assert example in shown
    assert "consumer." not in shown and "Settings object" not in shown  # no module names, no docstring
