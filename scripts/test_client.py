"""The prototype's test client, kept for its users: submit scripts/test_data.json
and follow the job's progress until its results are in.

A thin wrapper over ``texteval submit FILE --follow``; settings (broker,
topics, security) come from the environment or .env like everywhere else.

    .venv/bin/python scripts/test_client.py                        # the sample texts
    .venv/bin/python scripts/test_client.py my_texts.csv --out results.csv
    .venv/bin/python scripts/test_client.py --bootstrap localhost:9094   # the compose stack's Kafka
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_FILE = Path(__file__).resolve().parent / "test_data.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", nargs="?", type=Path, default=DEFAULT_FILE, help="JSON, JSONL or CSV of texts")
    parser.add_argument("--out", default=None, help="write the results (.csv or .jsonl)")
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (else KAFKA_BOOTSTRAP_SERVERS)")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="give up following after this long")
    return parser


def texteval_argv(args: argparse.Namespace) -> list[str]:
    """The `texteval` command line this client stands for."""
    argv = ["submit", str(args.file), "--follow", "--timeout-s", str(args.timeout_s)]
    if args.out:
        argv += ["--out", args.out]
    return argv


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.bootstrap:
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = args.bootstrap  # Settings() reads it inside the CLI
    from consumer.tools.cli import main as texteval

    return texteval(texteval_argv(args))


if __name__ == "__main__":
    sys.exit(main())
