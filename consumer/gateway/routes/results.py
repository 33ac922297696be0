"""``GET /jobs/{job_id}/results``: a job's results as a file.

``format=xlsx`` or ``layout=gradebook``: the teachers' file (the model's
grade and feedback, the teacher's correction, the final grade; in
``lang``); otherwise the prototype's machine-readable columns (CSV or
JSONL). The query is checked before the job is looked up. A finished job of
which this gateway holds only part (``incomplete``) is served with what it
holds, its file named ``.incomplete`` and the count of missing results in
``Texteval-Missing-Results``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from consumer.gateway.deps import GatewayDep, ReadableJobDep, ReaderDep
from consumer.gateway.errors import InvalidInput
from consumer.gateway.exports import export
from consumer.gateway.jobs import GatewayJobStatus
from consumer.gateway.results import ResultsFile, results_problem

router = APIRouter()

# On a results file of an `incomplete` job: how many of its results this gateway does not hold.
MISSING_HEADER = "Texteval-Missing-Results"


@dataclass(frozen=True, slots=True)
class ResultsQuery:
    format: str
    lang: str
    layout: str


def results_query(caller: ReaderDep, format: str = "csv", lang: str = "ca", layout: str = "machine") -> ResultsQuery:
    """The query, checked after the caller (401 first) and before the lookup (422 before 404)."""
    problem = results_problem(format, lang, layout)
    if problem is not None:
        raise InvalidInput([problem])
    return ResultsQuery(format, lang, layout)


@router.get("/jobs/{job_id:path}/results")
async def results(
    job_id: str,
    query: Annotated[ResultsQuery, Depends(results_query)],
    record: ReadableJobDep,
    gateway: GatewayDep,
) -> Response:
    missing = record.missing_results if record.state is GatewayJobStatus.INCOMPLETE else 0
    if query.format == "xlsx" or query.layout == "gradebook":  # with the corrections: built each time
        rows = gateway.rows.rows(record)
        body, media, name = export(job_id, rows, gateway.applied.of(record), query.format, lang=query.lang)
        file = ResultsFile(body, media, name.replace("-", ".incomplete-", 1) if missing else name)
    else:
        file = gateway.rows.file(record, query.format, missing=missing)
    headers = {"Content-Disposition": f'attachment; filename="{file.filename}"'}
    if missing:
        headers[MISSING_HEADER] = str(missing)
    return Response(file.text, media_type=file.media_type, headers=headers)
