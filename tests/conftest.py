"""Shared fixtures. The real engine loads once per session (~40 s on CPU)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from consumer.contract import Item
from consumer.settings import Settings
from consumer.testing.topics import make_settings
from tests.kafka_harness import *  # noqa: F403 - broker fixtures for every test module
from tests.kafka_harness import TopicNames

SettingsFactory = Callable[..., Settings]

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"


def sample_items() -> list[Item]:
    items: list[Item] = []
    for line in (DATA / "sample_requests.jsonl").read_text(encoding="utf-8").splitlines():
        items.extend(Item.model_validate(raw) for raw in json.loads(line)["items"])
    return items


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


# -- tiers ---------------------------------------------------------------------
# Every test gets its tier from what it uses, so a new test cannot forget it:
# the real engine's fixtures → engine, the broker's → kafka, tests/bench/ →
# bench; `process` is declared by the modules that start processes. A test
# with none of them is a unit test. `make test-fast` = unit + kafka.
_ENGINE_FIXTURES = {"real_engine", "engine_settings"}
_KAFKA_FIXTURES = {"kafka_bootstrap", "kafka_target", "kafka_group_kwargs"}
_TIERS = ("kafka", "process", "engine", "bench")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    bench_dir = Path(__file__).parent / "bench"
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & _ENGINE_FIXTURES:
            item.add_marker(pytest.mark.engine)
        if names & _KAFKA_FIXTURES:
            item.add_marker(pytest.mark.kafka)
        if bench_dir in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.bench)
        if not any(item.get_closest_marker(tier) for tier in _TIERS):
            item.add_marker(pytest.mark.unit)


@pytest.fixture
def settings_for(kafka_bootstrap: str, topic_names: TopicNames, kafka_group_kwargs: dict[str, int]) -> SettingsFactory:
    """Settings for a consumer on this test's fresh topics: ``settings_for(BATCH_SIZE=5)``."""

    def build(**overrides: Any) -> Settings:
        return make_settings(kafka_bootstrap, topic_names, kafka_group_kwargs, **overrides)

    return build


# -- what did not run ----------------------------------------------------------
# A skip is easy to miss in a dotted line: the run ends by saying how many
# tests did not run, why, and the one command that installs what they need.
_SYSTEM_PACKAGES = {"chromium": "chromium", "prometheus": "prometheus", "promtool": "prometheus"}


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons: dict[str, int] = {}
    for report in skipped:
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    packages = sorted({pkg for reason in reasons for word, pkg in _SYSTEM_PACKAGES.items() if word in reason.lower()})
    write = terminalreporter.write_line
    write("")
    write(f"texteval: {len(skipped)} tests did not run:", yellow=True, bold=True)
    for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
        write(f"  {count:4d}  {reason}")
    if packages:
        write(f"  to run them: sudo apt-get install -y {' '.join(packages)}   (.ci/run does it as root)", bold=True)
