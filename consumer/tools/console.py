"""What every command shows a person: log set-up and the one progress bar."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, TextIO

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


class LibraryLog:
    """The libraries' output to a log file, the product's lines to the terminal.

    vLLM's engine runs in processes it spawns, which print (logging, tqdm's
    bars while safetensors load, torch warnings) straight to the file
    descriptors 1 and 2 they inherit; so do pip, aiokafka and transformers
    here through ``sys.stderr``. Environment variables reach only some of
    them, so the descriptors themselves are pointed at the log file for the
    duration, this process's and every child's, and the product writes to
    ``terminal``: a copy of the original stderr. Errors (logging ERROR and
    above, from any logger that reaches the root) still show on the
    terminal, in one line that names the log.
    """

    def __init__(self, path: Path, *, append: bool = False) -> None:
        self.path = path
        self._mode = "a" if append else "w"
        self._saved: tuple[int, int] | None = None
        self._log: IO[str] | None = None
        self._handler: logging.Handler | None = None
        self.terminal: TextIO = sys.stderr

    def __enter__(self) -> LibraryLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        log = self._log = self.path.open(self._mode, encoding="utf-8")
        self._saved = (os.dup(1), os.dup(2))
        self.terminal = os.fdopen(os.dup(self._saved[1]), "w", buffering=1, encoding="utf-8", errors="replace")
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        self._handler = _TerminalErrors(self.terminal, self.path)
        logging.getLogger().addHandler(self._handler)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
        if self._saved is not None:
            os.dup2(self._saved[0], 1)
            os.dup2(self._saved[1], 2)
            os.close(self._saved[0])
            os.close(self._saved[1])
            self._saved = None
        self.terminal.close()
        if self._log is not None:
            self._log.close()


class _TerminalErrors(logging.Handler):
    """ERROR and above on the terminal: what the user must act on, with where the details are."""

    def __init__(self, terminal: TextIO, log: Path) -> None:
        super().__init__(logging.ERROR)
        self._terminal = terminal
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._terminal.write(f"error ({record.name}): {record.getMessage()} (details in {self._log})\n")
            self._terminal.flush()
        except Exception:  # noqa: BLE001 (a log line must never break the caller)
            self.handleError(record)
