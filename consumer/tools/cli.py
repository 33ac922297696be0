"""The ``texteval`` command line: every command, registered here and nowhere else.

A command is one function under ``@texteval.command_of(NAME, help=...)`` with
click's options below it; it takes the ``Settings`` and its options, returns
the exit code, and may be ``async`` (``consumer.tools.commandline``: the one
adapter runs it, and prints a ``KafkaSetupError`` as ``NAME: cannot use Kafka:
...``, exit 2). Each command builds what it needs from the settings through
``consumer.engine.factory`` and imports its work when it runs, so ``texteval
--help`` stays quick. What ``--help`` shows is written for users:
``DESCRIPTION`` and ``EPILOG`` below, the ``help=`` texts, not this docstring.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

import click

from consumer.settings import Settings
from consumer.tools.commandline import HelpArgument, Invocation, Texteval
from consumer.tools.console import configure_logging, progress_bar
from consumer.tools.doctor import FULL_JOB_TEXTS
from consumer.tools.loop_commands import ERASED_HELP, NONE, SOURCE_HELP, TOPIC

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


texteval = Texteval("texteval", help=DESCRIPTION, epilog=EPILOG)
command = texteval.command_of
F = TypeVar("F", bound=Callable[..., object])
ENGINES = click.Choice(["vllm", "fake"])


@command("run", help="the consumer and its side HTTP server, until SIGTERM/SIGINT")
@click.option("--engine", type=ENGINES, default="vllm", help="fake: no model (tests)")
@click.option("--fake-delay-ms", type=float, default=50.0, help="per-item delay of the fake engine")
@click.option("--fake-concurrency", type=int, default=None, help="items the fake engine runs at once")
async def run(settings: Settings, engine: str, fake_delay_ms: float, fake_concurrency: int | None) -> int:
    from consumer.pipeline.service import serve

    fake = None
    if engine == "fake":
        # For load and fault tests of the pipeline: no model, same code path.
        from consumer.engine.fake import FakeEngine

        review_below = settings.engine.review_confidence if settings.engine.grade_distribution else None
        fake = FakeEngine(delay_s=fake_delay_ms / 1000.0, max_concurrency=fake_concurrency, review_below=review_below)
    return await serve(settings, fake)


@command("broker", help="a local Kafka-compatible broker (Tansu) for development")
@click.option("--port", type=int, default=9092)
@click.option("--host", default="127.0.0.1")
def broker(settings: Settings, port: int, host: str) -> int:
    from consumer.tools.broker import run_forever

    run_forever(port=port, host=host)
    return 0


@command("submit", help="produce jobs from JSON, JSONL or CSV; --follow to wait for results")
@click.argument("file")
@click.option("--follow", is_flag=True)
@click.option("--out", default=None, help="with --follow: write results (.csv or .jsonl)")
@click.option("--timeout-s", type=float, default=3600.0)
@click.option("--manifest", default=None, help="write the job ids and sizes (JSONL) for `texteval verify`")
@click.option("--tenant", default=None, help="write every job as <tenant>/<job id> (contract 1.2)")
async def submit(
    settings: Settings, file: str, follow: bool, out: str | None, timeout_s: float, manifest: str | None,
    tenant: str | None,
) -> int:  # fmt: skip
    from rich.console import Console

    from consumer.kafka import check_connection
    from consumer.spreadsheets import write_private
    from consumer.tools.client import FollowSummary, read_jobs, submit_and_follow
    from consumer.tools.client import submit as produce_jobs
    from consumer.tools.files import InputFileError, write_results

    console = Console(stderr=True)
    try:
        jobs = read_jobs(Path(file), settings.jobs.max_items_per_job, tenant=tenant)
    except (InputFileError, OSError) as exc:
        console.print(f"[red]cannot read {file}: {exc}")
        return 2
    await check_connection(settings)
    total = sum(len(job.items) for job in jobs)
    if manifest:
        # What `texteval verify` needs to check these jobs later.
        lines = [json.dumps({"job_id": job.job_id, "total_items": len(job.items)}) for job in jobs]
        await asyncio.to_thread(write_private, Path(manifest), "\n".join(lines) + "\n")  # owner-only, as results
    if not follow:
        await produce_jobs(settings, jobs)
        console.print(f"submitted {len(jobs)} jobs ({total} texts): {', '.join(str(j.job_id) for j in jobs)}")
        return 0
    with progress_bar(console) as bar:
        task = bar.add_task(f"{len(jobs)} jobs", total=total)
        followed = await submit_and_follow(settings, jobs, on_result=lambda _: bar.advance(task), timeout_s=timeout_s)
    results = [r for job in followed.values() for r in job.results.values()]
    if out:
        write_results(results, Path(out))
        console.print(f"{len(results)} results written to {out}")
    console.print(str(FollowSummary.of(followed)))
    return 0


@command("verify", help="check the results and progress topics against the jobs produced")
@click.argument("manifest", cls=HelpArgument,
                help='JSONL: one request per line, or {"job_id": ..., "total_items": N} lines')  # fmt: skip
@click.option("--wait-s", type=float, default=0.0, help="re-read until every job is whole, at most this long")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
async def verify(settings: Settings, manifest: str, wait_s: float, as_json: bool) -> int:
    from consumer.tools.verify import main as verify_main

    return await verify_main(settings, Path(manifest), wait_s, as_json)


@command("demo", help="broker + consumer + the sample jobs, streamed, then a clean stop")
@click.option("--file", default="data/sample_requests.jsonl")
@click.option("--out", default="results.csv")
@click.option("--log", default=".cache/demo.log", help="where the libraries' messages go (overwritten)")
@click.option("--engine", type=ENGINES, default="vllm", help="fake: no model (tests)")
def demo(settings: Settings, file: str, out: str, log: str, engine: str) -> int:
    import traceback

    from rich.console import Console
    from rich.markup import escape

    from consumer.tools.console import LibraryLog
    from consumer.tools.demo import run_demo

    fake = None
    if engine == "fake":  # tests: the demo's terminal and log without a model
        from consumer.engine.fake import FakeEngine

        fake = FakeEngine(delay_s=0.02, review_below=settings.engine.review_confidence)
    # The demo narrates on the terminal itself; the service's own logs and
    # every library's (vLLM and its engine processes, aiokafka, transformers,
    # torch) go to the log file, errors excepted (LibraryLog).
    log_path = Path(log)
    with LibraryLog(log_path) as quiet:
        console = Console(file=quiet.terminal, soft_wrap=True)  # the terminal wraps: whole lines in a file
        try:
            # Its own event loop, not the adapter's: Ctrl-C surfaces as KeyboardInterrupt only
            # outside asyncio.run, and is answered here, while the terminal is still the demo's.
            code = asyncio.run(run_demo(settings, Path(file), Path(out), fake, console=console, log=log_path))
        except KeyboardInterrupt:
            console.print(f"[red]demo interrupted[/] (log: {log_path})")
            return 130
        except Exception as exc:  # noqa: BLE001 (the traceback goes to the log, one line to the user)
            traceback.print_exc()  # to stderr: the log file
            console.print(f"[red]demo failed:[/] {type(exc).__name__}: {escape(str(exc))}")
            console.print(f"  the full traceback is in {log_path}")
            return 1
    if fake is None:
        _exit_now(code)
    return code


def _exit_now(code: int) -> NoReturn:
    """Exit once everything is written, without the interpreter's teardown.

    After a real engine ran, Python's own finalisation (deallocating torch's,
    vLLM's and the 262k-piece tokenizers' objects one by one, module by
    module) took 2-3 s after the demo's last line, with no Python frame to
    show for it. The results file and the log are closed, the engine's
    processes stopped; the exit handlers still run (logging's flush,
    multiprocessing's clean-up), only the deallocation is left to the OS.
    """
    import atexit
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(code)


@command("grade", help="grade a JSON/JSONL/CSV file of items offline")
@click.argument("file")
@click.option("--out", default="results.csv", help=".csv or .jsonl")
@click.option("--job-id", default=None, help="default: file:<file name>")
async def grade(settings: Settings, file: str, out: str, job_id: str | None) -> int:
    from rich.console import Console

    from consumer.engine.factory import build_engine
    from consumer.tools.files import InputFileError, job_id_for, read_items, write_results
    from consumer.tools.offline import grade_items

    console = Console(stderr=True)
    path = Path(file)
    try:
        items = read_items(path, settings.jobs.max_items_per_job)
    except (InputFileError, OSError) as exc:
        console.print(f"[red]cannot read {path}: {exc}")
        return 2
    console.print(f"loading the engine for {len(items)} items …")
    started = time.monotonic()
    engine = await build_engine(settings)
    load_s = time.monotonic() - started
    console.print(f"engine ready in {load_s:.1f} s: {engine.model_name}")
    try:
        with progress_bar(console) as progress:
            task = progress.add_task("grading", total=len(items))
            grading_started = time.monotonic()
            results = await grade_items(
                engine, job_id or job_id_for(path), items, on_result=lambda _: progress.advance(task)
            )
            grading_s = time.monotonic() - grading_started
    finally:
        await engine.close()
    write_results(results, Path(out))
    codes = collections.Counter(r.error.code.value if r.error else "ok" for r in results)
    summary = ", ".join(f"{code}: {count}" for code, count in sorted(codes.items()))
    console.print(
        f"graded {len(results)} items in {grading_s:.1f} s "
        f"({len(results) / grading_s:.2f} texts/s; engine load {load_s:.1f} s) — {summary}"
    )
    console.print(f"results written to {out}")
    return 0


@command("canary-record", help="grade items with this deployment's model into a CANARY_FILE")
@click.argument("file", cls=HelpArgument, help="JSON, JSONL or CSV items (a handful, grades spread over 0..5)")
@click.option("--out", required=True, help="the canary JSONL to write")
@click.option("--runs", type=int, default=2, help="grade this many times; refuse grades that move")
async def canary_record(settings: Settings, file: str, out: str, runs: int) -> int:
    """Record a start-up canary on a deployment whose grades people have validated (docs/models.md)."""
    from consumer.engine.canary import CanaryRecordError, record_canary, write_canary
    from consumer.engine.factory import build_engine
    from consumer.tools.files import InputFileError, read_items

    try:
        items = read_items(Path(file), settings.jobs.max_items_per_job)
    except (InputFileError, OSError) as exc:
        print(f"cannot read {file}: {exc}", file=sys.stderr)
        return 2
    engine = await build_engine(settings)
    try:
        canary = await record_canary(engine, items, runs=runs)
    except CanaryRecordError as exc:
        print(f"not recorded: {exc}", file=sys.stderr)
        return 1
    finally:
        await engine.close()
    write_canary(Path(out), canary)
    grades = ", ".join(f"{entry.item.id_alumno}={entry.nota}" for entry in canary)
    print(f"{out}: {len(canary)} items for {engine.model_name} ({grades}); set CANARY_FILE to it")
    return 0


@command("render-prompt", help="item JSON on stdin -> exact prompt on stdout")
@click.option("--tokens", is_flag=True, help='print {"model", "token_ids", "tokens"} JSON (loads the tokenizer only)')
def render_prompt(settings: Settings, tokens: bool) -> int:
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
    if tokens:
        # What the engine is fed, from the tokenizer alone (no model weights).
        tokenizer = load_tokenizer(model)
        builder = build_prompt_builder(model, tokenizer)
        ids = build_prompt_tokenizer(builder, tokenizer).encode(builder.build(item))
        out = {"model": model.name, "token_ids": ids, "tokens": tokenizer.convert_ids_to_tokens(ids)}
        sys.stdout.buffer.write(json.dumps(out, ensure_ascii=False).encode("utf-8") + b"\n")
        sys.stdout.flush()
        return 0
    prompt = build_prompt_builder(model).build(item)
    sys.stdout.buffer.write(prompt.text.encode("utf-8"))
    sys.stdout.flush()
    return 0


@command("schemas", help="write the JSON Schemas of every message")
@click.option("--dir", default="schemas")
def schemas(settings: Settings, dir: str) -> int:
    from consumer.schemas import write_schemas

    for path in write_schemas(Path(dir)):
        print(path)
    return 0


@command("gateway", help="the HTTP gateway (POST /evaluate, SSE /stream) over the topics")
@click.option("--host", default=None, help="default: GATEWAY_HOST (127.0.0.1)")
@click.option("--port", type=int, default=None, help="default: GATEWAY_PORT (8080)")
async def gateway(settings: Settings, host: str | None, port: int | None) -> int:
    from consumer.gateway.server import serve_gateway

    return await serve_gateway(settings, host or settings.gateway.host, port or settings.gateway.port)


@command("cancel", help="produce a cancel command for a job")
@click.argument("job_id")
async def cancel(settings: Settings, job_id: str) -> int:
    from pydantic import ValidationError

    from consumer.commands import control_producer, produce_command
    from consumer.contract import ControlAction, ControlCommand
    from consumer.kafka import check_connection
    from consumer.tenants import tenant_of

    try:
        # Acts for the job's own tenant (1.2: a command for another tenant's job is ignored).
        command = ControlCommand(action=ControlAction.CANCEL, job_id=job_id, tenant=tenant_of(job_id))
    except ValidationError:
        print("cancel: not a valid job_id (1-128 characters of A-Z a-z 0-9 . _ : / -)", file=sys.stderr)
        return 2
    await check_connection(settings)
    async with control_producer(settings) as producer:
        await produce_command(producer, settings.kafka.control_topic, command)
    print(f"cancel requested for {job_id} on {settings.kafka.control_topic}")
    return 0


@command("erase", help="erase a job's data: cancel it, delete its job state, make every gateway forget it; "
         "prints what stays in the topics until when")  # fmt: skip
@click.argument("job_id")
@click.option("--tenant", default=None, help="act for this tenant (it must own the job)")
@click.option("--admin", is_flag=True, help="act as an operator (any job)")
async def erase(settings: Settings, job_id: str, tenant: str | None, admin: bool) -> int:
    from consumer.tools.erase import erase_job  # contract 1.2

    return await erase_job(settings, job_id, tenant=tenant, admin=admin)


@command("explain", help="a grade's decision record, its corrections, and the exact prompt while the request is kept")
@click.argument("result_id", cls=HelpArgument, help="<job_id>#<item index>")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
async def explain(settings: Settings, result_id: str, as_json: bool) -> int:
    from consumer.tools.explain import explain_command  # contract 1.3

    return await explain_command(settings, result_id, as_json=as_json)


@command("correct", help="produce teachers' corrections (JSONL or CSV) to the corrections topic")
@click.argument("file", cls=HelpArgument,
                help="JSONL or CSV of {job_id, item_index, nota, feedback?, comment?, corrected_at?}")  # fmt: skip
async def correct(settings: Settings, file: str) -> int:
    from consumer.tools.loop_commands import correct_command

    return await correct_command(settings, Path(file))


def sources(*, requests_default: str | None) -> Callable[[F], F]:
    """The teachers' loop's inputs (``agreement``, ``export-training``): a file, or the topic."""
    options = [
        click.option("--results", default=TOPIC,
                     help=SOURCE_HELP.format(kinds=".jsonl or .csv", setting="KAFKA_RESULTS_TOPIC")),
        click.option("--corrections", default=TOPIC,
                     help=SOURCE_HELP.format(kinds=".jsonl or .csv", setting="KAFKA_CORRECTIONS_TOPIC")),
        click.option("--requests", default=requests_default,
                     help=SOURCE_HELP.format(kinds=".jsonl of requests with job_id", setting="KAFKA_REQUESTS_TOPIC")),
        click.option("--erased", type=click.Choice([TOPIC, NONE]), default=TOPIC, help=ERASED_HELP),
    ]  # fmt: skip

    def add(fn: F) -> F:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return add


@command("agreement", help="model vs teachers: exact, within-one, quadratic weighted kappa, confusion matrix")
@sources(requests_default=None)
@click.option("--json", "as_json", is_flag=True, help="print the figures as JSON")
async def agreement(
    settings: Settings, results: str, corrections: str, requests: str | None, erased: str, as_json: bool
) -> int:
    from consumer.tools.loop_commands import Sources, agreement_command

    return await agreement_command(settings, Sources(results, corrections, requests, erased), as_json=as_json)


@command("export-training", help="corrected items in the fine-tune's training format (JSONL)")
@sources(requests_default=TOPIC)
@click.option("--out", required=True, help="the JSONL to write")
async def export_training(
    settings: Settings, results: str, corrections: str, requests: str, erased: str, out: str
) -> int:
    from consumer.tools.loop_commands import Sources, export_training_command

    return await export_training_command(settings, Sources(results, corrections, requests, erased), Path(out))


@command("release-check", help="may a candidate model replace the live one? QWK and SMD vs teachers")
@click.option(
    "--live", default=TOPIC,
    help="live results: a .jsonl/.csv file, 'topic' (KAFKA_RESULTS_TOPIC), or 'none' to judge the candidate alone",
)  # fmt: skip
@click.option(
    "--candidate", default=None,
    help="candidate results: 'shadow' (KAFKA_SHADOW_RESULTS_TOPIC) or a file of texteval grade --out",
)  # fmt: skip
@click.option("--corrections", default=TOPIC, help="a .jsonl/.csv file, or 'topic' (KAFKA_CORRECTIONS_TOPIC)")
@click.option("--subgroups", type=click.Path(path_type=Path), default=None,
              help="CSV id_alumno,group (stays on this machine)")  # fmt: skip
@click.option("--erased", type=click.Choice([TOPIC, NONE]), default=TOPIC, help="skip erased jobs (as agreement)")
@click.option("--min-qwk", type=float, default=None)
@click.option("--human-qwk", type=float, default=None, help="the teachers' QWK with each other, if measured")
@click.option("--max-qwk-below-human", type=float, default=None)
@click.option("--max-smd", type=float, default=None)
@click.option("--max-subgroup-smd", type=float, default=None)
@click.option("--min-subgroup-n", type=int, default=None)
@click.option("--min-n", type=int, default=None, help="fewer: 'not enough corrections', fail")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
async def release_check(
    settings: Settings, live: str, candidate: str | None, corrections: str, subgroups: Path | None, erased: str,
    min_qwk: float | None, human_qwk: float | None, max_qwk_below_human: float | None, max_smd: float | None,
    max_subgroup_smd: float | None, min_subgroup_n: int | None, min_n: int | None, as_json: bool,
) -> int:  # fmt: skip
    from consumer.tools.release import Thresholds
    from consumer.tools.release_commands import release_check_command

    # Unset: the automated-scoring defaults in consumer/tools/release.py (importing it here
    # would load the engine's modules into every command, the gateway's included).
    given = {
        "min_qwk": min_qwk, "human_qwk": human_qwk, "max_qwk_below_human": max_qwk_below_human,
        "max_smd": max_smd, "max_subgroup_smd": max_subgroup_smd, "min_subgroup_n": min_subgroup_n, "min_n": min_n,
    }  # fmt: skip
    set_ = {name: value for name, value in given.items() if value is not None}
    limits = Thresholds(**set_)  # type: ignore[arg-type]  # each option has its field's type (click converts)
    return await release_check_command(
        settings, live=None if live == NONE else live, candidate=candidate, corrections=corrections,
        subgroups=subgroups, thresholds=limits, erased=erased, as_json=as_json,
    )  # fmt: skip


@command("calibrate", help="fit the confidence's temperature on teachers' corrections (CALIBRATION_FILE)")
@click.option("--results", default=TOPIC, help="a .jsonl file, 'topic' or 'shadow'")
@click.option("--corrections", default=TOPIC, help="a .jsonl/.csv file, or 'topic'")
@click.option("--prompt-format", required=True, type=click.Choice(["gemma_finetune", "chat_template"]),
              help="the format the results were graded in (the file's key, with the model name)")  # fmt: skip
@click.option("--out", type=click.Path(path_type=Path), required=True, help="the calibration file to write")
@click.option("--holdout", type=float, default=0.3, help="share of corrections held out for the ECE")
@click.option("--review-share", type=float, default=None, help="choose REVIEW_CONFIDENCE for this share")
@click.option("--erased", type=click.Choice([TOPIC, NONE]), default=TOPIC, help="skip erased jobs (as agreement)")
async def calibrate(
    settings: Settings, results: str, corrections: str, prompt_format: str, out: Path, holdout: float,
    review_share: float | None, erased: str,
) -> int:  # fmt: skip
    from consumer.tools.release_commands import calibrate_command

    return await calibrate_command(
        settings, results=results, corrections=corrections, prompt_format=prompt_format, out=out,
        holdout=holdout, review_share=review_share, erased=erased,
    )  # fmt: skip


@command("doctor", help="check the GPU configuration; --gpu: measure the seed's three figures on this GPU host")
@click.option(
    "--gpu",
    is_flag=True,
    help="run the engine tests, a warm start, the canary and a full-size job; exit 2 without a GPU",
)
@click.option("--texts", type=int, default=FULL_JOB_TEXTS, help="texts in the measured job")
@click.option("--skip-tests", is_flag=True, help="do not run the engine tests first")
async def doctor(settings: Settings, gpu: bool, texts: int, skip_tests: bool) -> int:
    from consumer.tools.doctor import doctor_command  # issue 29: the first GPU host

    return await doctor_command(settings, gpu=gpu, texts=texts, skip_tests=skip_tests)


@command("config-docs", help="write docs/configuration.md from the settings")
@click.option("--out", default="docs/configuration.md")
@click.option("--check", is_flag=True, help="exit 1 if the file differs, write nothing")
def config_docs(settings: Settings, out: str, check: bool) -> int:
    from consumer.tools import config_docs

    path = Path(out)
    if check:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != config_docs.render():
            print(f"{path} is out of date: run `{config_docs.REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    print(f"{path}: {'written' if config_docs.write(path) else 'unchanged'}")
    return 0


@command("prepare-model", help="convert the packaged small model once")
@click.option("--log", default=None, help="libraries' messages to this file (appended), not the terminal")
def prepare_model(settings: Settings, log: str | None) -> int:
    from consumer.engine.model_store import is_prepared, prepare_small_model
    from consumer.tools.console import LibraryLog

    if log is None or is_prepared(settings.engine.model_cache_dir):
        print(prepare_small_model(settings.engine.model_cache_dir))
        return 0
    # `make setup`: one line on the terminal, transformers' warnings and bars in the log.
    with LibraryLog(Path(log), append=True) as quiet:
        quiet.terminal.write(f"setup: converting the packaged model once (about a minute; log: {log})\n")
        path = prepare_small_model(settings.engine.model_cache_dir)
    print(path)
    return 0


def parse(argv: Sequence[str]) -> Invocation:
    """The command a ``texteval`` command line names, with its options, not run yet;
    ``--help`` prints and exits 0, a usage error exits 2."""
    return texteval.parse(argv)


def help_text(command: str | None = None) -> str:
    """What ``texteval --help`` (or ``texteval COMMAND --help``) prints."""
    return texteval.help_text(command)


def main(argv: Sequence[str] | None = None) -> int:
    """``texteval``: parse, then the settings from the environment, then run the command."""
    invocation = parse(sys.argv[1:] if argv is None else argv)
    settings = Settings()
    configure_logging(settings.http.log_level)
    return invocation.run(settings)


if __name__ == "__main__":
    sys.exit(main())
