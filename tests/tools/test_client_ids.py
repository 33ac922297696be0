"""Job ids the command line writes: unguessable, and carrying a tenant when asked (contract 1.2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consumer.tenants import tenant_of
from consumer.tools.client import read_jobs
from consumer.tools.files import InputFileError

DATA = Path(__file__).resolve().parents[2] / "data"


def test_file_job_ids_are_fresh_and_unguessable_and_carry_the_tenant() -> None:
    first, second = read_jobs(DATA / "sample_items.csv", 2000), read_jobs(DATA / "sample_items.csv", 2000)
    assert first[0].job_id != second[0].job_id  # the same file twice, the same second: two jobs
    assert first[0].job_id is not None and len(first[0].job_id.rsplit(":", 1)[1]) == 16  # 64 random bits
    (scoped,) = read_jobs(DATA / "sample_items.csv", 2000, tenant="school-42")
    assert scoped.job_id is not None and tenant_of(scoped.job_id) == "school-42"
    assert scoped.job_id.startswith("school-42/file:sample_items:")


def test_named_jobs_are_scoped_and_bad_tenants_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    item = {"id_alumno": "A", "curso": "1r", "consigna": "C", "respuesta": "R"}
    path.write_text(json.dumps({"job_id": "term-1/b7", "items": [item]}) + "\n", encoding="utf-8")
    assert [j.job_id for j in read_jobs(path, 10, tenant="school-7")] == ["school-7/term-1/b7"]
    assert [j.job_id for j in read_jobs(path, 10)] == ["term-1/b7"]
    for bad in ("a/b", "", "a b"):
        with pytest.raises(InputFileError, match="tenant"):
            read_jobs(path, 10, tenant=bad)
    path.write_text(json.dumps({"job_id": "x" * 120, "items": [item]}) + "\n", encoding="utf-8")
    with pytest.raises(InputFileError, match="too long"):
        read_jobs(path, 10, tenant="school-7")
