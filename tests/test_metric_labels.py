"""Metric label values are written once: an enum in the module that emits them.

Every `.labels(...)` call in consumer/ passes enum members (or values computed
from data: a model name, a partition), never a string literal; and each
emitter creates its label's series at 0 from that enum (a series born at 1
hides its first increase from rate()).
"""

from __future__ import annotations

import ast
from enum import StrEnum
from pathlib import Path

from consumer.contract import ErrorCode, ItemStatus, ReviewReason
from consumer.gateway.corrections import Agreement
from consumer.gateway.jobs import EvictReason
from consumer.gateway.limits import Limit
from consumer.gateway.metrics import GatewayMetrics
from consumer.metrics import NO_ERROR_CODE, Metrics, TenantLabel
from consumer.pipeline.control import CommandResult, ControlReader
from consumer.pipeline.dead_letters import DeadLetters
from consumer.pipeline.fetch import FetchError, SafeFetch
from consumer.pipeline.intake import RejectReason
from consumer.pipeline.jobstate.ledger import Deduplicated, Ledger
from consumer.pipeline.jobstate.store import JobStateStore, SkipReason
from consumer.pipeline.sinks import DeadLetterForm

CONSUMER = Path(__file__).resolve().parents[1] / "consumer"


def _literals_in_labels(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "labels"):
            continue
        for arg in [*node.args, *(keyword.value for keyword in node.keywords)]:
            keys = {id(sub.slice) for sub in ast.walk(arg) if isinstance(sub, ast.Subscript)}  # scope["method"]
            for inner in ast.walk(arg):  # also `"a" if x else "b"`
                if isinstance(inner, ast.Constant) and isinstance(inner.value, str) and id(inner) not in keys:
                    found.append((node.lineno, inner.value))
    return found


def test_the_scan_finds_a_literal_label_value() -> None:
    code = "\n".join([
        'm.fetch_errors.labels(kind="fetch_failed").inc()',
        'm.c.labels(result="a" if x else R.B)',
        'm.g.labels(s["method"])',
    ])  # fmt: skip
    assert sorted(_literals_in_labels(ast.parse(code))) == [(1, "fetch_failed"), (2, "a")]


def test_no_labels_call_in_consumer_passes_a_string_literal() -> None:
    offenders = [
        f"{path.relative_to(CONSUMER.parent)}:{line}: {value!r}"
        for path in sorted(CONSUMER.rglob("*.py"))
        for line, value in _literals_in_labels(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert offenders == [], "label values belong to an enum of the emitting module:\n" + "\n".join(offenders)


def _values(metrics: Metrics | GatewayMetrics, name: str, label: str) -> set[str]:
    return {
        sample.labels[label]
        for family in metrics.registry.collect()
        if family.name == name
        for sample in family.samples
        if sample.value == 0
    }


def _all(enum: type[StrEnum]) -> set[str]:
    return {member.value for member in enum}


def test_the_consumers_emitters_create_their_label_series_at_zero() -> None:
    metrics = Metrics()
    SafeFetch(object(), metrics)  # type: ignore[arg-type]  # the constructor only keeps it
    ControlReader({}, metrics, object(), topic="control", ttl_s=60.0)  # type: ignore[arg-type]
    Ledger(object(), metrics)  # type: ignore[arg-type]
    JobStateStore(object(), {}, metrics, topic="state", retention_s=60.0)  # type: ignore[arg-type]
    DeadLetters(object(), metrics)  # type: ignore[arg-type]
    assert _values(metrics, "texteval_fetch_errors", "kind") == _all(FetchError)
    # A record's dead letter is counted by DeadLetters (its reasons), one too large to fetch by SafeFetch.
    assert _values(metrics, "texteval_dead_letters", "reason") == _all(RejectReason) | {
        FetchError.TOO_LARGE_TO_FETCH.value
    }
    assert _values(metrics, "texteval_control_commands", "result") == _all(CommandResult)
    assert _values(metrics, "texteval_jobs_deduplicated", "admission") == _all(Deduplicated)
    assert _values(metrics, "texteval_job_state_skipped", "reason") == _all(SkipReason)
    assert _values(metrics, "texteval_dead_letters_reduced", "form") == _all(DeadLetterForm) - {"whole"}
    # The ground floor's own: the contract's enums and the tenant labels that are no tenant.
    assert _values(metrics, "texteval_items_graded", "error_code") == _all(ErrorCode) | {NO_ERROR_CODE}
    assert _values(metrics, "texteval_items_graded", "status") == _all(ItemStatus)
    assert _values(metrics, "texteval_review_reasons", "reason") == _all(ReviewReason)
    assert _values(metrics, "texteval_tenant_grades", "tenant") == {TenantLabel.NONE.value}
    assert _values(metrics, "texteval_scheduler_tenant_items_waiting", "tenant") == {TenantLabel.OTHER.value}


def test_the_gateways_label_series_exist_at_zero_from_the_emitters_enums() -> None:
    metrics = GatewayMetrics()
    assert _values(metrics, "texteval_gateway_limited", "limit") == _all(Limit)
    assert _values(metrics, "texteval_gateway_corrections", "agreement") == _all(Agreement)
    assert _values(metrics, "texteval_gateway_jobs_evicted", "reason") == _all(EvictReason)
