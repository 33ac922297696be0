"""Plain helpers the test modules import: the repository's paths, the sample
items, the settings factory's type. (Fixtures live in tests/conftest.py and
the plugins it names; nothing imports from a conftest.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from consumer.contract import Item
from consumer.settings import Settings

# What the `settings_for` fixture returns: ``settings_for(BATCH_SIZE=5)``.
SettingsFactory = Callable[..., Settings]

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"

# A skipped test's reason → the system package that runs it (the suite's
# closing summary prints the install line; the README repeats it).
SYSTEM_PACKAGES = {"chromium": "chromium", "prometheus": "prometheus", "promtool": "prometheus"}


def sample_items() -> list[Item]:
    items: list[Item] = []
    for line in (DATA / "sample_requests.jsonl").read_text(encoding="utf-8").splitlines():
        items.extend(Item.model_validate(raw) for raw in json.loads(line)["items"])
    return items
