"""Pytest plugin: every test's tier, and the two xdist workers' split.

Registered by ``pytest_plugins`` in tests/conftest.py. The tiers are named
and described here only (pytest's marker registration, ``pytest --markers``
and the README's table all read ``TIERS``); each test's tier is derived from
what it uses, so a new test cannot forget it:

- ``engine``: the real engine's fixtures (``ENGINE_FIXTURES``). A test that
  loads the engine in another process (``texteval run`` as a subprocess)
  cannot be seen that way and declares it: ``pytestmark = pytest.mark.engine``.
- ``kafka``: the broker's fixtures (``KAFKA_FIXTURES``, tests/kafka_harness.py),
  or declared by a test that starts a broker of its own.
- ``process``: declared by the modules that start service processes.
- ``bench``: the tests under tests/bench/.
- ``unit``: none of these.

PYTEST_DONT_REWRITE: no asserts here; the marker keeps the plugin importable
by a test (tests/deploy/test_docs.py reads ``TIERS``) without pytest's
"already imported" warning.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

# `make test-fast` = unit + kafka.
TIERS = {
    "unit": "no broker, no process, no model (marked automatically)",
    "kafka": "needs a real broker (embedded Tansu, external, or testcontainers)",
    "process": "starts service processes (consumer, gateway, Prometheus) or a browser",
    "engine": "loads the real vLLM engine (CPU: Gemma 3 270M, ~40 s once per session)",
    "bench": "runs a benchmark's harness in smoke size (tests/bench/)",
}
ENGINE_FIXTURES = frozenset({"real_engine", "engine_settings", "graded_samples"})
KAFKA_FIXTURES = frozenset({"kafka_bootstrap", "kafka_target", "kafka_group_kwargs"})
MODEL_GROUP = "engine"

_TESTS = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    for name, description in TIERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    if not config.pluginmanager.hasplugin("xdist"):  # `-p no:xdist`: the groups are still marked
        config.addinivalue_line("markers", "xdist_group(name): run in one xdist worker with its group")


# Per item as it is collected, so every plugin's pytest_collection_modifyitems
# (the -m filter's included) sees the tiers.
def pytest_itemcollected(item: pytest.Item) -> None:
    names = set(getattr(item, "fixturenames", ()))
    path = Path(str(item.path))
    if names & ENGINE_FIXTURES:
        item.add_marker(pytest.mark.engine)
    if names & KAFKA_FIXTURES:
        item.add_marker(pytest.mark.kafka)
    if _TESTS / "bench" in path.parents:
        item.add_marker(pytest.mark.bench)
    if not any(item.get_closest_marker(tier) for tier in TIERS if tier != "unit"):
        item.add_marker(pytest.mark.unit)
    # The model's group: every engine test, however it loads the engine, and
    # tests/engine/ whole (its tests load the model's tokenizers from the same
    # model cache and import vLLM). One worker runs the group: see below.
    if item.get_closest_marker("engine") or _TESTS / "engine" in path.parents:
        item.add_marker(pytest.mark.xdist_group(MODEL_GROUP))


# -- two workers ---------------------------------------------------------------
# `make test` runs the suite on two pytest-xdist workers (`--dist loadgroup`).
# The model's group is one unit of work, so one worker owns the session's
# engine (loaded once, not once per worker) and the model cache, while the
# other runs the broker and process tests beside it: most of their time is
# spent waiting, the engine's computing. xdist's own loadgroup reads the
# `xdist_group` marks on the workers and tells the controller by appending
# "@group" to each node id through an attribute pytest 9.2 no longer reads, so
# the group is lost. Here the workers write the node ids of each group to a
# directory the controller names, and the controller's scheduler reads them:
# xdist's loadgroup, with the marks as the only source.
_GROUPS_DIR = "texteval_xdist_groups"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """On the controller, before a worker starts: where it writes its groups."""
    node.workerinput[_GROUPS_DIR] = str(_groups_dir(node.config))


def _groups_dir(config: pytest.Config) -> Path:
    if not hasattr(config, "_texteval_groups_dir"):
        directory = Path(tempfile.mkdtemp(prefix="texteval-xdist-groups-"))
        config._texteval_groups_dir = directory  # type: ignore[attr-defined]
        config.add_cleanup(lambda: shutil.rmtree(directory, ignore_errors=True))
    return config._texteval_groups_dir  # type: ignore[attr-defined, no-any-return]


# Last, after every plugin has added or deselected; before xdist's worker
# sends the collection (pytest_collection_finish), which is what starts the
# controller's scheduling.
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None or _GROUPS_DIR not in workerinput:
        return
    groups = {item.nodeid: _group(item) for item in items if item.get_closest_marker("xdist_group")}
    target = Path(workerinput[_GROUPS_DIR]) / f"{workerinput['workerid']}.json"
    partial = target.with_suffix(".part")
    partial.write_text(json.dumps(groups), encoding="utf-8")
    partial.replace(target)  # the controller never reads half a file


def _group(item: pytest.Item) -> str:
    names = set()
    for mark in item.iter_markers("xdist_group"):
        names.add(str(mark.args[0] if mark.args else mark.kwargs.get("name", "default")))
    return "_".join(sorted(names))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadgroup":
        return None  # another --dist asked for: xdist's own
    from xdist.scheduler import LoadScopeScheduling

    directory = _groups_dir(config)

    class GroupsFromMarks(LoadScopeScheduling):  # type: ignore[misc]
        """Each grouped test in its group's unit, every other test its own."""

        _groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            # Called once every worker has sent its collection, so every
            # worker's file is written (each holds the same groups).
            if self._groups is None:
                self._groups = {}
                for written in sorted(directory.glob("*.json")):
                    self._groups.update(json.loads(written.read_text(encoding="utf-8")))
            return self._groups.get(nodeid, nodeid)

    return GroupsFromMarks(config, log)
