"""The ``texteval`` command line.

Each command builds what it needs from one ``Settings`` object through
``consumer.engine.factory`` and nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import sys
import time
from pathlib import Path

from consumer.settings import Settings
from consumer.tools.console import configure_logging, progress_bar

logger = logging.getLogger("texteval")


def cmd_render_prompt(args: argparse.Namespace, settings: Settings) -> int:
    from pydantic import ValidationError

    from consumer.contract import Item
    from consumer.engine.factory import build_prompt_builder, build_prompt_tokenizer, load_tokenizer, resolve_model

    try:
        item = Item.model_validate_json(sys.stdin.buffer.read())
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, e["loc"])) or "item" for e in exc.errors())
        print(f"render-prompt: invalid item ({fields})", file=sys.stderr)
        return 2
    model = resolve_model(settings)
    if args.tokens:
        # What the engine is fed, from the tokenizer alone (no model weights).
        tokenizer = load_tokenizer(model)
        builder = build_prompt_builder(model, tokenizer)
        ids = build_prompt_tokenizer(builder, tokenizer).encode(builder.build(item))
        tokens = tokenizer.convert_ids_to_tokens(ids)
        out = {"model": model.name, "token_ids": ids, "tokens": tokens}
        sys.stdout.buffer.write(json.dumps(out, ensure_ascii=False).encode("utf-8") + b"\n")
        sys.stdout.flush()
        return 0
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
    from consumer.engine.model_store import prepare_small_model

    print(prepare_small_model(settings.model_cache_dir))
    return 0


async def _grade(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console

    from consumer.engine.factory import build_engine
    from consumer.pipeline.results import write_results
    from consumer.tools.files import InputFileError, job_id_for, read_items
    from consumer.tools.offline import grade_items

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
        with progress_bar(console) as progress:
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


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.kafka import KafkaSetupError
    from consumer.pipeline.service import serve

    engine = None
    if args.engine == "fake":
        # For load and fault tests of the pipeline: no model, same code path.
        from consumer.engine.fake import FakeEngine

        engine = FakeEngine(delay_s=args.fake_delay_ms / 1000.0, max_concurrency=args.fake_concurrency)
    try:
        return await serve(settings, engine)
    except KafkaSetupError as exc:
        logger.error("cannot use Kafka (%s): %s", exc.reason, exc)
        return 2


async def _submit(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console

    from consumer.kafka import KafkaSetupError, check_connection
    from consumer.pipeline.results import write_results
    from consumer.tools.client import read_jobs, submit_and_follow
    from consumer.tools.files import InputFileError

    console = Console(stderr=True)
    try:
        jobs = read_jobs(Path(args.file), settings.max_items_per_job)
    except (InputFileError, OSError) as exc:
        console.print(f"[red]cannot read {args.file}: {exc}")
        return 2
    try:
        await check_connection(settings)
    except KafkaSetupError as exc:
        console.print(f"[red]cannot use Kafka: {exc}")
        return 2
    total = sum(len(job.items) for job in jobs)
    if args.manifest:
        # What `texteval verify` needs to check these jobs later.
        lines = [json.dumps({"job_id": job.job_id, "total_items": len(job.items)}) for job in jobs]
        await asyncio.to_thread(Path(args.manifest).write_text, "\n".join(lines) + "\n", encoding="utf-8")
    if not args.follow:
        await submit_and_follow(settings, jobs, follow=False)
        console.print(f"submitted {len(jobs)} jobs ({total} texts): {', '.join(str(j.job_id) for j in jobs)}")
        return 0
    with progress_bar(console) as bar:
        task = bar.add_task(f"{len(jobs)} jobs", total=total)
        followed = await submit_and_follow(
            settings, jobs, follow=True, on_result=lambda _: bar.advance(task), timeout_s=args.timeout_s
        )
    results = [r for job in followed.values() for r in job.results.values()]
    if args.out:
        write_results(results, Path(args.out))
        console.print(f"{len(results)} results written to {args.out}")
    failed = sum(1 for r in results if r.error is not None)
    console.print(f"{len(results)} results: {len(results) - failed} ok, {failed} typed errors")
    return 0


async def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.tools.demo import run_demo

    # The demo narrates on the terminal itself; service logs would interleave.
    for name in ("consumer", "uvicorn.error"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))

    return await run_demo(settings, Path(args.file), Path(args.out))


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.tools.verify import main as verify_main

    return verify_main(settings, Path(args.manifest), args.wait_s, args.json)


def cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.tools.broker import run_forever

    run_forever(port=args.port, host=args.host)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="texteval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="the consumer and its side HTTP server, until SIGTERM/SIGINT")
    run.add_argument("--engine", choices=["vllm", "fake"], default="vllm", help="fake: no model (tests)")
    run.add_argument("--fake-delay-ms", type=float, default=50.0, help="per-item delay of the fake engine")
    run.add_argument("--fake-concurrency", type=int, default=None, help="items the fake engine runs at once")
    run.set_defaults(run=lambda a, s: asyncio.run(_run(a, s)))

    broker = sub.add_parser("broker", help="a local Kafka-compatible broker (Tansu) for development")
    broker.add_argument("--port", type=int, default=9092)
    broker.add_argument("--host", default="127.0.0.1")
    broker.set_defaults(run=cmd_broker)

    submit = sub.add_parser("submit", help="produce jobs from JSON, JSONL or CSV; --follow to wait for results")
    submit.add_argument("file")
    submit.add_argument("--follow", action="store_true")
    submit.add_argument("--out", default=None, help="with --follow: write results (.csv or .jsonl)")
    submit.add_argument("--timeout-s", type=float, default=3600.0)
    submit.add_argument("--manifest", default=None, help="write the job ids and sizes (JSONL) for `texteval verify`")
    submit.set_defaults(run=lambda a, s: asyncio.run(_submit(a, s)))

    verify = sub.add_parser("verify", help="check the results and progress topics against the jobs produced")
    verify.add_argument("manifest", help='JSONL: one request per line, or {"job_id": ..., "total_items": N} lines')
    verify.add_argument("--wait-s", type=float, default=0.0, help="re-read until every job is whole, at most this long")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(run=cmd_verify)

    demo = sub.add_parser("demo", help="broker + consumer + the sample jobs, streamed, then a clean stop")
    demo.add_argument("--file", default="data/sample_requests.jsonl")
    demo.add_argument("--out", default="results.csv")
    demo.set_defaults(run=lambda a, s: asyncio.run(_demo(a, s)))

    grade = sub.add_parser("grade", help="grade a JSON/JSONL/CSV file of items offline")
    grade.add_argument("file")
    grade.add_argument("--out", default="results.csv", help=".csv or .jsonl")
    grade.add_argument("--job-id", default=None, help="default: file:<file name>")
    grade.set_defaults(run=lambda a, s: asyncio.run(_grade(a, s)))

    render = sub.add_parser("render-prompt", help="item JSON on stdin -> exact prompt on stdout")
    render.add_argument(
        "--tokens", action="store_true", help='print {"model", "token_ids", "tokens"} JSON (loads the tokenizer only)'
    )
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
