"""A release-check fixture built by construction: teachers' grades, a live and a candidate model's.

Shared by tests/tools/test_release_check.py (the figures) and the CLI test.
240 students in three groups: "A" (130) and "B" (100) judged, "C" (10)
reported only. The live model misses by one now and then, both ways. The
candidate is closer to the teachers on A but grades B one point higher on
about a third of its items, and A slightly lower: overall its mean stays
near the teachers' (|SMD| within 0.15), group B's does not (> 0.10).
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

from consumer.contract import EvaluationResult, ItemStatus, Sampling

LIVE_MODEL = "live-model"
CANDIDATE_MODEL = "candidate-model"
JOB = "release-job"
SAMPLING = Sampling(temperature=0.0, top_p=1.0, max_tokens=380, seed=0)
AT = datetime(2026, 12, 1, tzinfo=UTC)


def build(seed: int = 7) -> tuple[list[int], list[int], list[int], list[str]]:
    """(teacher, live, candidate, group) per item."""
    rng = random.Random(seed)
    groups = ["A"] * 130 + ["B"] * 100 + ["C"] * 10
    teacher, live, candidate = [], [], []
    for group in groups:
        t = rng.choice([0, 1, 1, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 5, 5])
        teacher.append(t)
        roll = rng.random()
        live.append(min(5, max(0, t + (1 if roll < 0.15 else -1 if roll < 0.30 else 0))))
        # B: one point up a third of the time; A and C: one down a sixth of the time.
        up, down = rng.random() < 0.35, rng.random() < 0.16
        shift = int(up) if group == "B" else -int(down)
        candidate.append(min(5, max(0, t + shift)))
    return teacher, live, candidate, groups


def result(index: int, nota: int, model: str) -> EvaluationResult:
    return EvaluationResult(
        result_id=f"{JOB}#{index}", job_id=JOB, item_index=index, id_alumno=f"s{index:03d}",
        status=ItemStatus.OK, nota=nota, feedback="ok", error=None, model=model,
        prompt_sha256="0" * 64, sampling=SAMPLING, latency_ms=1.0, produced_at=AT,
    )  # fmt: skip


def write(directory: Path, seed: int = 7) -> dict[str, Path]:
    """The four files release-check reads: live and candidate results, corrections, subgroups."""
    teacher, live, candidate, groups = build(seed)
    paths = {name: directory / f"release_{name}" for name in ("live.jsonl", "candidate.jsonl", "corrections.jsonl")}
    paths["groups.csv"] = directory / "release_groups.csv"
    for name, grades, model in (("live.jsonl", live, LIVE_MODEL), ("candidate.jsonl", candidate, CANDIDATE_MODEL)):
        paths[name].write_text("".join(result(i, g, model).model_dump_json() + "\n" for i, g in enumerate(grades)))
    paths["corrections.jsonl"].write_text(
        "".join(
            json.dumps({"job_id": JOB, "item_index": i, "nota": t, "corrected_at": "2026-12-02T10:00:00Z"}) + "\n"
            for i, t in enumerate(teacher)
        )
    )
    paths["groups.csv"].write_text("id_alumno,group\n" + "".join(f"s{i:03d},{g}\n" for i, g in enumerate(groups)))
    return paths
