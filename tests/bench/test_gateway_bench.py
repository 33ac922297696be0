"""B8 (the gateway benchmark) at smoke size, so ``make bench`` keeps working.

Only that it runs and reports is checked (the machines are shared and noisy);
the figures come from ``make bench``.
"""

from __future__ import annotations

from pathlib import Path

from bench import b8_gateway
from bench.broker_io import KafkaTarget
from bench.common import SMOKE


async def test_b8_runs_and_reports(kafka_bootstrap: str, kafka_group_kwargs: dict[str, int], tmp_path: Path) -> None:
    result = await b8_gateway.run(KafkaTarget(kafka_bootstrap, kafka_group_kwargs, "test broker"), SMOKE, tmp_path)
    assert result.result != "failed", result.notes
    figures = result.figures
    for name in ("p50_1_ms", "p99_1_ms", "p50_n_ms", "p99_n_ms", "rss_start_mb", "rss_jobs_mb", "rss_streams_mb"):
        assert figures[name] > 0, (name, figures)
    assert figures["p99_n_ms"] >= figures["p50_n_ms"] and figures["rss_jobs_mb"] >= figures["rss_start_mb"] * 0.9
    assert "streams" in result.result and "RSS" in result.result
