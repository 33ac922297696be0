"""The ``texteval`` command line.

Each command builds what it needs from one ``Settings`` object through
``consumer.engine.factory`` and nothing else. What ``--help`` shows is
written for users: ``DESCRIPTION`` and ``EPILOG`` below, not this docstring.
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

DESCRIPTION = """\
Grade Catalan student answers with an LLM. The service reads evaluation
requests from Kafka and publishes one result per text (nota 0-5 and
feedback, or a typed error) plus progress events per job; the other commands
submit and check jobs, grade files offline, or run everything locally."""

EPILOG = """\
examples:
  texteval demo
      the whole service on this machine with the sample jobs, then a clean stop
  texteval submit texts.csv --follow --out results.csv --manifest jobs.jsonl
      send a file of texts (CSV, JSON or JSONL) as a job and wait for its results
  texteval verify jobs.jsonl --wait-s 60
      check that every text of those jobs got a result
  texteval grade texts.csv --out results.csv
      grade a file on this machine, without Kafka
  texteval cancel school-42/term-1
      stop grading a job (the texts graded so far keep their results)
  texteval erase school-42/term-1 --tenant school-42
      erase a job's data; prints what stays in the topics, and until when
  texteval run
      the grading service itself, until SIGTERM
  texteval gateway
      the HTTP API (POST /evaluate, live progress) and a page in front of the service

Settings (KAFKA_BOOTSTRAP_SERVERS, MODEL_NAME, ...) come from the environment
or a .env file; see .env.example and docs/configuration.md. `texteval COMMAND --help`
shows a command's options."""


def cmd_render_prompt(args: argparse.Namespace, settings: Settings) -> int:
    from pydantic import ValidationError

    from consumer.contract import Item
    from consumer.engine.factory import build_prompt_builder, build_prompt_tokenizer, load_tokenizer, resolve_model
    from consumer.validation import validation_problems

    try:
        item = Item.model_validate_json(sys.stdin.buffer.read())
    except ValidationError as exc:
        print(f"render-prompt: invalid item ({validation_problems(exc, root='item')})", file=sys.stderr)
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


def cmd_config_docs(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.tools import config_docs

    path = Path(args.out)
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != config_docs.render():
            print(f"{path} is out of date: run `{config_docs.REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    print(f"{path}: {'written' if config_docs.write(path) else 'unchanged'}")
    return 0


def cmd_prepare_model(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.engine.model_store import is_prepared, prepare_small_model
    from consumer.tools.console import LibraryLog

    if args.log is None or is_prepared(settings.model_cache_dir):
        print(prepare_small_model(settings.model_cache_dir))
        return 0
    # `make setup`: one line on the terminal, transformers' warnings and bars in the log.
    with LibraryLog(Path(args.log), append=True) as quiet:
        quiet.terminal.write(f"setup: converting the packaged model once (about a minute; log: {args.log})\n")
        path = prepare_small_model(settings.model_cache_dir)
    print(path)
    return 0


async def _canary_record(args: argparse.Namespace, settings: Settings) -> int:
    """Record a start-up canary on a deployment whose grades people have validated (docs/models.md)."""
    from consumer.engine.canary import CanaryRecordError, record_canary, write_canary
    from consumer.engine.factory import build_engine
    from consumer.tools.files import InputFileError, read_items

    try:
        items = read_items(Path(args.file), settings.max_items_per_job)
    except (InputFileError, OSError) as exc:
        print(f"cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    engine = await build_engine(settings)
    try:
        canary = await record_canary(engine, items, runs=args.runs)
    except CanaryRecordError as exc:
        print(f"not recorded: {exc}", file=sys.stderr)
        return 1
    finally:
        await engine.close()
    write_canary(Path(args.out), canary)
    grades = ", ".join(f"{entry.item.id_alumno}={entry.nota}" for entry in canary)
    print(f"{args.out}: {len(canary)} items for {engine.model_name} ({grades}); set CANARY_FILE to it")
    return 0


async def _grade(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console

    from consumer.engine.factory import build_engine
    from consumer.tools.files import InputFileError, job_id_for, read_items, write_results
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

        review_below = settings.review_confidence if settings.grade_distribution else None
        engine = FakeEngine(
            delay_s=args.fake_delay_ms / 1000.0, max_concurrency=args.fake_concurrency, review_below=review_below
        )
    try:
        return await serve(settings, engine)
    except KafkaSetupError as exc:
        logger.error("cannot use Kafka (%s): %s", exc.reason, exc)
        return 2


async def _submit(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console

    from consumer.kafka import KafkaSetupError, check_connection
    from consumer.spreadsheets import write_private
    from consumer.tools.client import FollowSummary, read_jobs, submit, submit_and_follow
    from consumer.tools.files import InputFileError, write_results

    console = Console(stderr=True)
    try:
        jobs = read_jobs(Path(args.file), settings.max_items_per_job, tenant=args.tenant)
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
        await asyncio.to_thread(write_private, Path(args.manifest), "\n".join(lines) + "\n")  # owner-only, as results
    if not args.follow:
        await submit(settings, jobs)
        console.print(f"submitted {len(jobs)} jobs ({total} texts): {', '.join(str(j.job_id) for j in jobs)}")
        return 0
    with progress_bar(console) as bar:
        task = bar.add_task(f"{len(jobs)} jobs", total=total)
        followed = await submit_and_follow(
            settings, jobs, on_result=lambda _: bar.advance(task), timeout_s=args.timeout_s
        )
    results = [r for job in followed.values() for r in job.results.values()]
    if args.out:
        write_results(results, Path(args.out))
        console.print(f"{len(results)} results written to {args.out}")
    console.print(str(FollowSummary.of(followed)))
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    import traceback

    from rich.console import Console
    from rich.markup import escape

    from consumer.tools.console import LibraryLog
    from consumer.tools.demo import run_demo

    engine = None
    if args.engine == "fake":  # tests: the demo's terminal and log without a model
        from consumer.engine.fake import FakeEngine

        engine = FakeEngine(delay_s=0.02, review_below=settings.review_confidence)
    # The demo narrates on the terminal itself; the service's own logs and
    # every library's (vLLM and its engine processes, aiokafka, transformers,
    # torch) go to the log file, errors excepted (LibraryLog).
    log = Path(args.log)
    with LibraryLog(log) as quiet:
        console = Console(file=quiet.terminal, soft_wrap=True)  # the terminal wraps: whole lines in a file
        try:
            return asyncio.run(run_demo(settings, Path(args.file), Path(args.out), engine, console=console, log=log))
        except KeyboardInterrupt:
            console.print(f"[red]demo interrupted[/] (log: {log})")
            return 130
        except Exception as exc:  # noqa: BLE001 (the traceback goes to the log, one line to the user)
            traceback.print_exc()  # to stderr: the log file
            console.print(f"[red]demo failed:[/] {type(exc).__name__}: {escape(str(exc))}")
            console.print(f"  the full traceback is in {log}")
            return 1


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.tools.verify import main as verify_main

    return verify_main(settings, Path(args.manifest), args.wait_s, args.json)


async def _gateway(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.gateway.server import serve_gateway

    return await serve_gateway(settings, args.host or settings.gateway_host, args.port or settings.gateway_port)


async def _cancel(args: argparse.Namespace, settings: Settings) -> int:
    from aiokafka import AIOKafkaProducer
    from pydantic import ValidationError

    from consumer.contract import ControlAction, ControlCommand
    from consumer.kafka import KafkaSetupError, check_connection, client_kwargs
    from consumer.tenants import tenant_of

    try:
        # Acts for the job's own tenant (1.2: a command for another tenant's job is ignored).
        command = ControlCommand(action=ControlAction.CANCEL, job_id=args.job_id, tenant=tenant_of(args.job_id))
    except ValidationError:
        print("cancel: not a valid job_id (1-128 characters of A-Z a-z 0-9 . _ : / -)", file=sys.stderr)
        return 2
    try:
        await check_connection(settings)
    except KafkaSetupError as exc:
        print(f"cancel: cannot use Kafka: {exc}", file=sys.stderr)
        return 2
    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all", enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.control_topic, value=command.model_dump_json().encode(), key=args.job_id.encode()
        )
    finally:
        await producer.stop()
    print(f"cancel requested for {args.job_id} on {settings.control_topic}")
    return 0


def cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.tools.broker import run_forever

    run_forever(port=args.port, host=args.host)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="texteval",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keep the examples' columns
    )
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")

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
    submit.add_argument("--tenant", default=None, help="write every job as <tenant>/<job id> (contract 1.2)")
    submit.set_defaults(run=lambda a, s: asyncio.run(_submit(a, s)))

    verify = sub.add_parser("verify", help="check the results and progress topics against the jobs produced")
    verify.add_argument("manifest", help='JSONL: one request per line, or {"job_id": ..., "total_items": N} lines')
    verify.add_argument("--wait-s", type=float, default=0.0, help="re-read until every job is whole, at most this long")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(run=cmd_verify)

    demo = sub.add_parser("demo", help="broker + consumer + the sample jobs, streamed, then a clean stop")
    demo.add_argument("--file", default="data/sample_requests.jsonl")
    demo.add_argument("--out", default="results.csv")
    demo.add_argument("--log", default=".cache/demo.log", help="where the libraries' messages go (overwritten)")
    demo.add_argument("--engine", choices=["vllm", "fake"], default="vllm", help="fake: no model (tests)")
    demo.set_defaults(run=cmd_demo)

    grade = sub.add_parser("grade", help="grade a JSON/JSONL/CSV file of items offline")
    grade.add_argument("file")
    grade.add_argument("--out", default="results.csv", help=".csv or .jsonl")
    grade.add_argument("--job-id", default=None, help="default: file:<file name>")
    grade.set_defaults(run=lambda a, s: asyncio.run(_grade(a, s)))

    canary = sub.add_parser("canary-record", help="grade items with this deployment's model into a CANARY_FILE")
    canary.add_argument("file", help="JSON, JSONL or CSV items (a handful, grades spread over 0..5)")
    canary.add_argument("--out", required=True, help="the canary JSONL to write")
    canary.add_argument("--runs", type=int, default=2, help="grade this many times; refuse grades that move")
    canary.set_defaults(run=lambda a, s: asyncio.run(_canary_record(a, s)))

    render = sub.add_parser("render-prompt", help="item JSON on stdin -> exact prompt on stdout")
    render.add_argument(
        "--tokens", action="store_true", help='print {"model", "token_ids", "tokens"} JSON (loads the tokenizer only)'
    )
    render.set_defaults(run=cmd_render_prompt)

    schemas = sub.add_parser("schemas", help="write the JSON Schemas of every message")
    schemas.add_argument("--dir", default="schemas")
    schemas.set_defaults(run=cmd_schemas)

    gateway = sub.add_parser("gateway", help="the HTTP gateway (POST /evaluate, SSE /stream) over the topics")
    gateway.add_argument("--host", default=None, help="default: GATEWAY_HOST (127.0.0.1)")
    gateway.add_argument("--port", type=int, default=None, help="default: GATEWAY_PORT (8080)")
    gateway.set_defaults(run=lambda a, s: asyncio.run(_gateway(a, s)))

    cancel = sub.add_parser("cancel", help="produce a cancel command for a job")
    cancel.add_argument("job_id")
    cancel.set_defaults(run=lambda a, s: asyncio.run(_cancel(a, s)))

    from consumer.tools.erase import add_erase_command  # contract 1.2

    add_erase_command(sub)

    from consumer.tools.explain import add_explain_command  # contract 1.3

    add_explain_command(sub)

    from consumer.tools.loop_commands import add_loop_commands  # correct, agreement, export-training

    add_loop_commands(sub)

    from consumer.tools.release_commands import add_release_commands  # issue 32: release-check, calibrate

    add_release_commands(sub)

    from consumer.tools.doctor import add_doctor_command  # issue 29: the first GPU host

    add_doctor_command(sub)

    docs = sub.add_parser("config-docs", help="write docs/configuration.md from the settings")
    docs.add_argument("--out", default="docs/configuration.md")
    docs.add_argument("--check", action="store_true", help="exit 1 if the file differs, write nothing")
    docs.set_defaults(run=cmd_config_docs)

    prepare = sub.add_parser("prepare-model", help="convert the packaged small model once")
    prepare.add_argument("--log", default=None, help="libraries' messages to this file (appended), not the terminal")
    prepare.set_defaults(run=cmd_prepare_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level)
    return int(args.run(args, settings))


if __name__ == "__main__":
    sys.exit(main())
