"""The ``texteval`` command line.

Each command builds what it needs from one ``Settings`` object through
``consumer.factory`` and nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import os
import sys
import time
from pathlib import Path

from consumer.settings import Settings

logger = logging.getLogger("texteval")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    # vLLM's own INFO lines drown a terminal; operators can set it back.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def cmd_render_prompt(args: argparse.Namespace, settings: Settings) -> int:
    from pydantic import ValidationError

    from consumer.factory import build_prompt_builder, resolve_model
    from consumer.models import Item

    try:
        item = Item.model_validate_json(sys.stdin.buffer.read())
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, e["loc"])) or "item" for e in exc.errors())
        print(f"render-prompt: invalid item ({fields})", file=sys.stderr)
        return 2
    model = resolve_model(settings)
    prompt = build_prompt_builder(model).build(item)
    sys.stdout.buffer.write(prompt.text.encode("utf-8"))
    sys.stdout.flush()
    return 0


def cmd_schemas(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.schemas import write_schemas

    for path in write_schemas(Path(args.dir)):
        print(path)
    return 0


def cmd_prepare_model(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.model_store import prepare_small_model

    print(prepare_small_model(settings.model_cache_dir))
    return 0


async def _grade(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from consumer.factory import build_engine
    from consumer.inputs import InputFileError, job_id_for, read_items
    from consumer.offline import grade_items
    from consumer.results import write_results

    console = Console(stderr=True)
    path = Path(args.file)
    try:
        items = read_items(path, settings.max_items_per_job)
    except (InputFileError, OSError) as exc:
        console.print(f"[red]cannot read {path}: {exc}")
        return 2
    job_id = args.job_id or job_id_for(path)
    console.print(f"loading the engine for {len(items)} items …")
    started = time.monotonic()
    engine = await build_engine(settings)
    load_s = time.monotonic() - started
    console.print(f"engine ready in {load_s:.1f} s: {engine.model_name}")
    try:
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("grading", total=len(items))
            grading_started = time.monotonic()
            results = await grade_items(engine, job_id, items, on_result=lambda _: progress.advance(task))
            grading_s = time.monotonic() - grading_started
    finally:
        await engine.close()
    write_results(results, Path(args.out))
    codes = collections.Counter(r.error.code.value if r.error else "ok" for r in results)
    summary = ", ".join(f"{code}: {count}" for code, count in sorted(codes.items()))
    console.print(
        f"graded {len(results)} items in {grading_s:.1f} s "
        f"({len(results) / grading_s:.2f} texts/s; engine load {load_s:.1f} s) — {summary}"
    )
    console.print(f"results written to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="texteval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    grade = sub.add_parser("grade", help="grade a JSON/JSONL/CSV file of items offline")
    grade.add_argument("file")
    grade.add_argument("--out", default="results.csv", help=".csv or .jsonl")
    grade.add_argument("--job-id", default=None, help="default: file:<file name>")
    grade.set_defaults(run=lambda a, s: asyncio.run(_grade(a, s)))

    render = sub.add_parser("render-prompt", help="item JSON on stdin -> exact prompt on stdout")
    render.set_defaults(run=cmd_render_prompt)

    schemas = sub.add_parser("schemas", help="write the JSON Schemas of every message")
    schemas.add_argument("--dir", default="schemas")
    schemas.set_defaults(run=cmd_schemas)

    prepare = sub.add_parser("prepare-model", help="convert the packaged small model once")
    prepare.set_defaults(run=cmd_prepare_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level)
    return int(args.run(args, settings))


if __name__ == "__main__":
    sys.exit(main())
