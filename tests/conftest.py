"""Shared fixtures. The real engine loads once per session (~40 s on CPU).

Test modules import plain helpers from tests/helpers.py and doubles from
tests/doubles.py, never from here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from consumer.contract import EvaluationResult
from consumer.settings import Settings
from consumer.testing.topics import TopicNames, make_settings
from tests.helpers import SYSTEM_PACKAGES, SettingsFactory, sample_items

# The broker's fixtures (kafka_bootstrap, topic_names, ...) and every test's
# tier with the two workers' split, for every test module.
pytest_plugins = ["tests.kafka_harness", "tests.tiers"]


@pytest.fixture(scope="session")
def engine_settings() -> Settings:
    # The packaged CPU default (Gemma 3 270M in the fine-tune's format), eager
    # start; MODEL_NAME etc. from the environment still apply, so the suite can
    # run against another model (MODEL_NAME=smollm2 is faster).
    return Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
async def real_engine(engine_settings: Settings) -> AsyncIterator[object]:
    from consumer.engine.factory import build_engine

    engine = await build_engine(engine_settings)
    yield engine
    await engine.close()


@pytest.fixture(scope="session")
async def graded_samples(real_engine: object) -> list[EvaluationResult]:
    """The 20 sample items graded once by the session's engine: the schema and
    the confidence checks read the same results instead of grading twice."""
    from consumer.engine.vllm_engine import VllmEngine
    from consumer.tools.offline import grade_items

    assert isinstance(real_engine, VllmEngine)
    return await grade_items(real_engine, "samples", sample_items())


@pytest.fixture
def settings_for(kafka_bootstrap: str, topic_names: TopicNames, kafka_group_kwargs: dict[str, int]) -> SettingsFactory:
    """Settings for a consumer on this test's fresh topics: ``settings_for(BATCH_SIZE=5)``."""

    def build(**overrides: Any) -> Settings:
        return make_settings(kafka_bootstrap, topic_names, kafka_group_kwargs, **overrides)

    return build


# -- what did not run ----------------------------------------------------------
# A skip is easy to miss in a dotted line: the run ends by saying how many
# tests did not run, why, and the one command that installs what they need.
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons: dict[str, int] = {}
    for report in skipped:
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    packages = sorted({pkg for reason in reasons for word, pkg in SYSTEM_PACKAGES.items() if word in reason.lower()})
    write = terminalreporter.write_line
    write("")
    write(f"texteval: {len(skipped)} tests did not run:", yellow=True, bold=True)
    for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
        write(f"  {count:4d}  {reason}")
    if packages:
        write(f"  to run them: sudo apt-get install -y {' '.join(packages)}   (.ci/run does it as root)", bold=True)
