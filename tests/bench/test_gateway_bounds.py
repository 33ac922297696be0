"""bench/gateway_bounds.py (issue 28's two gateway bounds) at smoke size, so it keeps working.

Only that it runs and reports is checked, and what does not depend on the
machine: the stream cap refuses past its size, every download holds the
whole job, the bodies are accepted. The figures come from running the script.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import gateway_bounds
from bench.broker_io import KafkaTarget

pytestmark = pytest.mark.kafka


async def test_gateway_bounds_runs_and_reports(
    kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], tmp_path: Path
) -> None:
    args = gateway_bounds.parse_args(
        ["--streams", "20", "--downloads", "4", "--items", "100", "--seconds", "2", "--bodies", "2", "--body-mb", "1"]
    )
    figures = await gateway_bounds.run(KafkaTarget(kafka_bootstrap, kafka_group_kwargs, "test broker"), args, tmp_path)
    health, rss = figures["health"], figures["rss"]
    assert health["stream_answers"] == {"200": 20, "429": 2}  # at the cap, and past it refused
    assert health["result_rows"] == 100 and health["downloads"] >= 4
    assert health["health_probes"] > 0 and health["health_p99_ms"] >= health["health_p50_ms"] > 0
    assert rss["body_answers"] == {"200": 2} and rss["body_bytes"] >= 990_000
    assert rss["rss_peak_mib"] >= rss["rss_start_mib"] > 0
    text = gateway_bounds.report(health, rss)
    assert "/health at the cap" in text and "peak" in text
