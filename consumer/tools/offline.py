"""Grade a list of items without Kafka: all of them in flight at once.

The engine batches whatever is in flight, so submitting everything and
collecting results as they finish is the fast way; chunking (the
prototype's ten at a time) leaves the accelerator idle between chunks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from consumer.contract import EvaluationResult, Item
from consumer.engine.base import GradingEngine
from consumer.pipeline.results import build_result


async def grade_items(
    engine: GradingEngine,
    job_id: str,
    items: Sequence[Item],
    on_result: Callable[[EvaluationResult], None] | None = None,
) -> list[EvaluationResult]:
    """Results in item order; ``on_result`` sees each one as it finishes."""

    async def grade_one(index: int, item: Item) -> EvaluationResult:
        outcome = await engine.grade(item, request_id=f"{job_id}#{index}")
        result = build_result(job_id=job_id, item_index=index, item=item, outcome=outcome, engine=engine)
        if on_result is not None:
            on_result(result)
        return result

    return list(await asyncio.gather(*(grade_one(i, item) for i, item in enumerate(items))))
