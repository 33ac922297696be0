"""Shared fixtures. The real engine loads once per session (~40 s on CPU)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from consumer.contract import EvaluationResult, Item
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


@pytest.fixture(scope="session")
async def graded_samples(real_engine: object) -> list[EvaluationResult]:
    """The 20 sample items graded once by the session's engine: the schema and
    the confidence checks read the same results instead of grading twice."""
    from consumer.engine.vllm_engine import VllmEngine
    from consumer.tools.offline import grade_items

    assert isinstance(real_engine, VllmEngine)
    return await grade_items(real_engine, "samples", sample_items())


# -- tiers ---------------------------------------------------------------------
# Every test gets its tier from what it uses, so a new test cannot forget it:
# the real engine's fixtures → engine, the broker's → kafka, tests/bench/ →
# bench; `process` is declared by the modules that start processes. A test
# with none of them is a unit test. `make test-fast` = unit + kafka.
_ENGINE_FIXTURES = {"real_engine", "engine_settings", "graded_samples"}
_KAFKA_FIXTURES = {"kafka_bootstrap", "kafka_target", "kafka_group_kwargs"}
_TIERS = ("kafka", "process", "engine", "bench")


_TESTS = Path(__file__).parent


# Per item as it is collected, so every plugin's pytest_collection_modifyitems
# (the -m filter's included) sees the tiers.
def pytest_itemcollected(item: pytest.Item) -> None:
    names = set(getattr(item, "fixturenames", ()))
    if names & _ENGINE_FIXTURES:
        item.add_marker(pytest.mark.engine)
    if names & _KAFKA_FIXTURES:
        item.add_marker(pytest.mark.kafka)
    if _TESTS / "bench" in Path(str(item.path)).parents:
        item.add_marker(pytest.mark.bench)
    if not any(item.get_closest_marker(tier) for tier in _TIERS):
        item.add_marker(pytest.mark.unit)
    if item.get_closest_marker("engine") and not in_model_group(item.nodeid):
        raise pytest.UsageError(f"{item.nodeid} loads the engine: add it to MODEL_TESTS in tests/conftest.py")


# -- two workers ---------------------------------------------------------------
# `make test` runs the suite on two pytest-xdist workers. The tests that load
# the model or its tokenizers are one unit of work, so one worker owns the
# session's engine (loaded once, not once per worker) and the model cache,
# while the other runs the broker and process tests beside it: most of their
# time is spent waiting, the engine's computing. xdist's own `loadgroup` cannot
# do this today: it tags node ids through an attribute pytest 9.2 no longer
# reads, so the unit is chosen here, by node id, on the controller (which
# collects nothing); the check above keeps MODEL_TESTS complete.
MODEL_TESTS = (
    "tests/engine/",
    "tests/bench/test_bench_smoke.py::test_real_engine",
    "tests/pipeline/test_end_to_end.py::",
    "tests/pipeline/test_scheduler_engine.py::",
    "tests/pipeline/test_privacy_and_engine_death.py::",
    "tests/pipeline/test_shadow_engine.py::",
)


def in_model_group(nodeid: str) -> bool:
    return nodeid.startswith(MODEL_TESTS)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadgroup":
        return None  # another --dist asked for: xdist's own
    from xdist.scheduler import LoadScopeScheduling

    class ModelTestsTogether(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return "model" if in_model_group(nodeid) else nodeid

    return ModelTestsTogether(config, log)


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
