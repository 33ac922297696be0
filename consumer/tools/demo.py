"""``texteval demo``: the whole service on one machine, then a clean stop.

embedded broker -> consumer with the real engine (+ /health, /metrics) ->
the sample jobs submitted and followed live -> results written -> drain,
leave the group, stop the broker.

The terminal shows the product's own lines only (``console``: the caller
gives the terminal, cli.py's ``cmd_demo`` sends everything else to a log file
through ``consumer.tools.console.LibraryLog``).
"""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from consumer.contract import (
    AcceptedEvent,
    BatchCompleteEvent,
    CancelledEvent,
    CompleteEvent,
    EvaluationRequest,
    EvaluationResult,
    ProgressEvent,
)
from consumer.engine.base import GradingEngine
from consumer.http import HttpServer, create_app
from consumer.metrics import Metrics
from consumer.pipeline.service import consumer_running, ensure_service_topics
from consumer.settings import Settings
from consumer.tools.broker import EmbeddedBroker
from consumer.tools.client import read_jobs, submit_and_follow
from consumer.tools.console import progress_bar
from consumer.tools.files import write_results


async def run_demo(
    settings: Settings,
    jobs_file: Path,
    out: Path,
    engine: GradingEngine | None = None,
    *,
    console: Console | None = None,
    log: Path | None = None,
) -> int:
    console = console or Console(stderr=True)
    started = time.monotonic()
    jobs = read_jobs(jobs_file, settings.jobs.max_items_per_job)  # a bad file is said now, not after the engine's start
    # The engine's start comes first; the broker and its topics are set up
    # meanwhile (the engine loads in worker threads and its own processes).
    engine_started = time.monotonic()
    loaded = engine is None
    loading = asyncio.create_task(_load_engine(settings, console)) if engine is None else None
    broker = EmbeddedBroker()
    try:
        await asyncio.to_thread(broker.start)
        settings = settings.with_(
            kafka_bootstrap_servers=broker.bootstrap_servers,
            # The embedded broker answers a group join after half the
            # session timeout: keep it short for a snappy demo.
            kafka_session_timeout_ms=2000,
            kafka_heartbeat_interval_ms=500,
        )
        await ensure_service_topics(settings)
        console.print(f"[bold]broker[/] Tansu on {broker.bootstrap_servers} (in memory)")
        if loading is not None:
            engine = await loading
        assert engine is not None
        console.print(
            f"[bold]engine[/] {engine.model_name} ready in {time.monotonic() - engine_started:.1f} s"
            + (" (weights loaded, output grammars compiled, warm-up graded)" if loaded else "")
        )
        metrics = Metrics()
        try:
            async with consumer_running(settings, engine, metrics) as app:
                http = HttpServer(create_app(app, metrics), "127.0.0.1", 0)
                await http.start()
                console.print(f"[bold]http[/] health and metrics on http://127.0.0.1:{http.port}/health, /metrics")
                try:
                    results, grading_s = await _submit(settings, jobs, jobs_file, console)
                finally:
                    await http.stop()
            console.print("[bold]consumer[/] drained, offsets committed, left the group")
        finally:
            await engine.close()
    finally:
        if loading is not None and engine is None:
            # The broker failed while the engine loaded: stop the load, close what it built.
            loading.cancel()
            built = (await asyncio.gather(loading, return_exceptions=True))[0]
            if not isinstance(built, BaseException):
                await built.close()
        broker.stop()
    write_results(results, out)
    ok = sum(1 for r in results if r.error is None)
    console.print(
        f"[bold green]done[/] {len(results)} results ({ok} ok, {len(results) - ok} typed errors) in "
        f"{grading_s:.1f} s = {len(results) / grading_s:.2f} texts/s end to end; "
        f"demo total {time.monotonic() - started:.1f} s"
    )
    console.print(f"[bold]summary[/] {summarize(results)}")
    console.print(f"[bold]results[/] {out}")
    if log is not None:
        console.print(f"[bold]log[/] {log} (vLLM, Kafka client and other libraries' messages)")
    return 0


async def _load_engine(settings: Settings, console: Console) -> GradingEngine:
    """The real engine, with a line that says it is loading and for how long so far."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from consumer.engine.factory import build_engine

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
        bar.add_task("[bold]engine[/] loading (half a minute on a quiet 2-core CPU)", total=None)
        # Forked engine processes: no second and third import of torch and vLLM (vllm_compat.start_async_llm).
        return await build_engine(settings, fork=True)


def summarize(results: list[EvaluationResult]) -> str:
    """Grades given, typed errors, and how many a teacher should look at (no texts)."""
    grades = collections.Counter(r.nota for r in results if r.error is None and r.nota is not None)
    given = ", ".join(f"{count}× {nota}" for nota, count in sorted(grades.items())) or "none"
    errors = collections.Counter(r.error.code.value for r in results if r.error is not None)
    line = f"grades {given}"
    if errors:
        line += "; errors " + ", ".join(f"{count}× {code}" for code, count in sorted(errors.items()))
    flagged = [r for r in results if r.needs_review]
    if any(r.needs_review is not None for r in results):
        line += f"; {len(flagged)} of {len(results)} to review"
    return line


async def _submit(
    settings: Settings, jobs: list[EvaluationRequest], jobs_file: Path, console: Console
) -> tuple[list[EvaluationResult], float]:
    total = sum(len(job.items) for job in jobs)
    console.print(f"[bold]submit[/] {len(jobs)} jobs, {total} texts from {jobs_file}")
    with progress_bar(console) as bar:
        task = bar.add_task("grading", total=total)

        def on_result(result: EvaluationResult) -> None:
            bar.advance(task)
            bar.console.print(describe_result(result))

        def on_event(event: ProgressEvent) -> None:
            bar.console.print(f"  [cyan]{event.job_id}[/] {_describe(event)}")

        started = time.monotonic()
        followed = await submit_and_follow(settings, jobs, on_result=on_result, on_event=on_event)
        grading_s = time.monotonic() - started
    return [r for job in followed.values() for r in job.results.values()], grading_s


def describe_result(result: EvaluationResult) -> str:
    """One result's line: who, the grade, and the feedback in full (rich markup; the feedback escaped)."""
    who = f"  {escape(result.job_id)} #{result.item_index:<3} {escape(result.id_alumno):<6}"
    if result.error is not None:
        return f"{who} [red]{result.error.code.value}[/]"
    review = " [yellow](to review)[/]" if result.needs_review else ""
    feedback = escape((result.feedback or "").replace("\n", " "))
    return f"{who} [bold]nota {result.nota}[/]{review}  {feedback}"


def _describe(event: ProgressEvent) -> str:
    match event:
        case AcceptedEvent(data=data):
            return f"accepted: {data.total_items} texts, estimate {data.estimated_time_seconds} s"
        case BatchCompleteEvent(data=data):
            p = data.progress
            return (f"batch {data.batch_number}: {p.completed}/{p.total} ({p.percentage}%), "
                    f"{p.estimated_remaining_seconds:.1f} s to go")  # fmt: skip
        case CompleteEvent(data=data):
            return f"complete: {data.succeeded} ok, {data.failed} failed in {data.total_time_seconds} s"
        case CancelledEvent(data=data):
            return f"cancelled: {data.completed}/{data.total_items} graded ({data.succeeded} ok, {data.failed} failed)"
