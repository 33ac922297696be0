"""What every command shows a person: log set-up and the one progress bar."""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


# Libraries whose DEBUG lines print message payloads (aiokafka logs every
# record it sends, value included): student texts, so never below INFO.
_PAYLOAD_LOGGERS = ("aiokafka",)


def configure_logging(level: str) -> None:
    """LOG_LEVEL applies to texteval's own loggers; libraries stay at INFO or above."""
    own = logging.getLevelName(level.upper())
    logging.basicConfig(
        level=max(own, logging.INFO), format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )
    logging.getLogger("consumer").setLevel(own)
    for name in _PAYLOAD_LOGGERS:
        logging.getLogger(name).setLevel(max(own, logging.INFO))
    # vLLM's own INFO lines drown a terminal; operators can set it back.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def progress_bar(console: Console) -> Progress:
    """The bar every long command shows: description, bar, done/total, elapsed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console,
    )  # fmt: skip
