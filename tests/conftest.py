"""Shared fixtures. The real engine loads once per session (~40 s on CPU)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consumer.contract import Item
from consumer.settings import Settings
from tests.kafka_harness import *  # noqa: F403 - broker fixtures for every test module

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
