"""``texteval demo``'s terminal holds the product's lines; the libraries' go to the log it names.

vLLM prints from the engine processes it spawns, straight to the file
descriptors they inherit: the first test spawns such a child and checks where
each kind of line lands. The second runs the real command line (embedded
broker, consumer, the sample jobs) with the fake engine.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.process

_SCRIPT = textwrap.dedent(
    """
    import logging, multiprocessing, sys, warnings
    from pathlib import Path

    def child():  # like vLLM's EngineCore: spawned, prints to the fds it inherits
        print("CHILD-STDOUT loading weights", flush=True)
        print("CHILD-STDERR Loading safetensors checkpoint shards: 100%", file=sys.stderr, flush=True)
        logging.basicConfig()
        logging.getLogger("vllm.engine").warning("CHILD-LOGGING warning")

    if __name__ == "__main__":
        from consumer.tools.console import LibraryLog, configure_logging

        configure_logging("INFO")
        with LibraryLog(Path(sys.argv[1])) as quiet:
            quiet.terminal.write("PRODUCT engine ready\\n")
            print("LIB-STDOUT a library's print")
            print("LIB-STDERR a library's print", file=sys.stderr)
            warnings.warn("LIB-WARNING deprecated", FutureWarning, stacklevel=1)
            logging.getLogger("aiokafka").info("LIB-INFO joined the group")
            logging.getLogger("consumer.pipeline").warning("OWN-WARNING a service log line")
            process = multiprocessing.get_context("spawn").Process(target=child)
            process.start()
            process.join()
            logging.getLogger("consumer.engine").error("the engine died: see why")
            quiet.terminal.write("PRODUCT done\\n")
        print("AFTER terminal again")
    """
)


def test_library_lines_go_to_the_log_and_errors_to_the_terminal(tmp_path: Path) -> None:
    script = tmp_path / "demo_like.py"
    script.write_text(_SCRIPT, encoding="utf-8")
    log = tmp_path / "logs" / "demo.log"
    run = subprocess.run([sys.executable, str(script), str(log)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    terminal = run.stdout + run.stderr
    assert "PRODUCT engine ready" in run.stderr and "PRODUCT done" in run.stderr
    assert f"error (consumer.engine): the engine died: see why (details in {log})" in run.stderr
    assert run.stdout == "AFTER terminal again\n"  # the descriptors are back afterwards
    kept = log.read_text(encoding="utf-8")
    for line in ("CHILD-STDOUT", "CHILD-STDERR", "CHILD-LOGGING", "LIB-STDOUT", "LIB-STDERR", "LIB-WARNING",
                 "LIB-INFO", "OWN-WARNING", "the engine died"):  # fmt: skip
        assert line in kept, line
        assert line not in terminal.replace("the engine died: see why (details", ""), line


# What the demo itself prints: its own prefixes, result lines, and event lines.
_PRODUCT_LINE = re.compile(
    r"^(broker|engine|http|submit|grading|consumer|done|summary|results|log) |"
    r"^  demo-job-\d+ (#\d+ +\S+ +(nota \d|[a-z_]+)|accepted|batch|complete|cancelled)"
)


def test_texteval_demo_shows_only_product_lines_with_feedback(tmp_path: Path) -> None:
    log, out = tmp_path / "demo.log", tmp_path / "results.csv"
    run = subprocess.run(
        [sys.executable, "-m", "consumer.tools.cli", "demo", "--engine", "fake", "--file", "data/sample_requests.jsonl",
         "--out", str(out), "--log", str(log)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    strays = [line for line in lines if not _PRODUCT_LINE.match(line)]
    assert strays == [], strays
    graded = [line for line in lines if re.match(r"^  demo-job-\d+ #", line)]
    assert len(graded) == 20
    # Each grade with its feedback beside it (the fake engine's feedback is text).
    assert all(re.search(r"nota \d( \(to review\))?  \S.{5,}", line) for line in graded), graded
    assert any(line.startswith("summary grades ") for line in lines)
    assert f"results {out}" in lines and any(line.startswith(f"log {log} ") for line in lines)
    # The libraries' lines are in the log (aiokafka joins a group, at least).
    assert "aiokafka" in log.read_text(encoding="utf-8")
    assert out.is_file()


def test_a_demo_that_fails_says_so_in_one_line_and_keeps_the_traceback_in_the_log(tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    run = subprocess.run(
        [sys.executable, "-m", "consumer.tools.cli", "demo", "--engine", "fake", "--file", str(tmp_path / "none.jsonl"),
         "--out", str(tmp_path / "results.csv"), "--log", str(log)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1
    assert run.stderr.startswith("demo failed: FileNotFoundError") and f"the full traceback is in {log}" in run.stderr
    assert "Traceback" not in run.stderr and "Traceback" in log.read_text(encoding="utf-8")
