"""The documentation that can drift is generated or checked: the settings
reference is rendered from ``Settings`` (and compared here), every setting is
documented once, the README stays a first screen, and links resolve."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import AliasChoices, Field, SecretStr

from consumer.settings import Settings, setting_fields
from consumer.tools import config_docs
from consumer.tools.cli import main
from tests.helpers import REPO

DOCS = REPO / "docs"
SETTINGS_ENV = {f.env for f in setting_fields()}
# A table row whose first cell names settings: `| `A`, `B` | ...`.
SETTING_ROW = re.compile(r"^\|\s*((?:`[A-Z][A-Z0-9_]*`(?:,\s*)?)+)\s*\|")


def reference_rows(text: str) -> list[str]:
    """First cells naming settings, in tables that give defaults (a reference, not a recommendation)."""
    found: list[str] = []
    header: str | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
        elif header is None:
            header = line.lower()
        elif "default" in header and (match := SETTING_ROW.match(line)):
            found.append(match.group(1))
    return found


def prose_docs() -> list[Path]:
    return [REPO / "README.md", REPO / "CHANGELOG.md", *sorted(DOCS.glob("*.md"))]


# --- docs/configuration.md ------------------------------------------------------------


def test_configuration_doc_is_what_the_settings_render() -> None:
    written = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert written == config_docs.render(), f"docs/configuration.md is stale: run `{config_docs.REGENERATE}`"


def test_every_setting_is_documented_once_with_a_meaning() -> None:
    assert config_docs.undocumented() == [], "add a comment above these settings in consumer/settings.py"
    rows = re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", (DOCS / "configuration.md").read_text(encoding="utf-8"), re.M)
    assert sorted(rows) == sorted(SETTINGS_ENV)  # each once, none that the code does not read
    # Nowhere else is a setting a row of a reference table: one place to change.
    for doc in prose_docs():
        if doc.name == "configuration.md" or not doc.exists():
            continue
        cells = reference_rows(doc.read_text(encoding="utf-8"))
        again = {n.strip("` ") for cell in cells for n in cell.split(",")} & SETTINGS_ENV
        assert not again, f"{doc.name} re-documents {sorted(again)}: link configuration.md instead"


class _Extended(Settings):
    # --- erasure ---
    # How long an erased job's tombstones stay readable | to consumers.
    erase_tombstone_s: float = Field(default=86400.0, gt=0, alias="ERASE_TOMBSTONE_S")
    erase_mode: str = Field(default="shred", alias="ERASE_MODE")
    erase_key: SecretStr = Field(
        default=SecretStr("s3cret-value"), validation_alias=AliasChoices("ERASE_KEY", "OLD_KEY")
    )


def test_a_new_setting_gets_its_section_row_and_meaning_or_is_reported() -> None:
    text = config_docs.render(_Extended)
    assert "## Erasure\n" in text
    erasure = text.split("## Erasure\n", 1)[1]
    meaning = "How long an erased job's tombstones stay readable \\| to consumers."  # a pipe, escaped
    assert f"| `ERASE_TOMBSTONE_S` | `86400` (1 d) | > 0 | {meaning} |" in erasure
    # Inherited settings keep their own sections and come first.
    assert text.index("| `MODEL_NAME` |") < text.index("## Erasure")
    missing = config_docs.undocumented(_Extended)
    assert "ERASE_MODE" in missing and "ERASE_TOMBSTONE_S" not in missing
    # Every name it is read from; a secret's default is never printed.
    assert "| `ERASE_KEY`, `OLD_KEY` | set (secret) |" in erasure and "s3cret-value" not in text


def test_defaults_and_allowed_values_are_rendered_from_the_field() -> None:
    fields = {f.env.lower(): f.info for f in setting_fields()}
    assert config_docs.render_default("kafka_max_message_bytes", fields["kafka_max_message_bytes"]) == (
        "`16777216` (16 MiB)"
    )
    assert config_docs.render_default("model_name", fields["model_name"]) == "unset"
    assert config_docs.render_default("gateway_api_keys", fields["gateway_api_keys"]) == "empty"
    assert config_docs.render_default("enable_prefix_caching", fields["enable_prefix_caching"]) == "`true`"
    assert config_docs.render_allowed(fields["kafka_compression_type"]) == "`none`, `gzip`, `snappy`, `lz4`, `zstd`"
    assert config_docs.render_allowed(fields["top_p"]) == "> 0, ≤ 1"


def test_config_docs_command_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "configuration.md"
    out.write_text("stale\n", encoding="utf-8")
    assert main(["config-docs", "--check", "--out", str(out)]) == 1
    assert out.read_text(encoding="utf-8") == "stale\n"  # --check writes nothing
    assert main(["config-docs", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == config_docs.render()
    assert main(["config-docs", "--check", "--out", str(out)]) == 0
    capsys.readouterr()


# --- the README and the pages -------------------------------------------------------------

README = REPO / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")
REPO_PATH = re.compile(r"`((?:consumer|tests|deploy|scripts|bench|schemas|data|requirements)/[\w./-]*\w)`")


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to dashes."""
    anchors = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_the_readme_fits_a_first_screen_and_says_what_matters() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    # The topic picture names every topic the service uses.
    for topic in Settings.defaults().service_topics():
        assert topic.removesuffix(".DLT") in text, topic
    for command in ("make demo", "make test ", "make test-fast"):
        assert command in text, command
    # The test tiers, as the suite's plugin registers them.
    from tests.tiers import TIERS

    markers = list(TIERS)
    assert {"unit", "kafka", "process", "engine", "bench"} <= set(markers)
    for marker in markers:
        assert f"| `{marker}` |" in text, marker
    # The install line the suite prints for skipped tests.
    from tests.helpers import SYSTEM_PACKAGES as _SYSTEM_PACKAGES

    assert f"sudo apt-get install -y {' '.join(sorted(set(_SYSTEM_PACKAGES.values())))}" in text


def test_every_link_and_every_named_path_exists() -> None:
    for doc in prose_docs():
        text = doc.read_text(encoding="utf-8")
        for target in LINK.findall(text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            resolved = (doc.parent / path).resolve() if path else doc
            assert resolved.is_relative_to(REPO), f"{doc.name}: {target} is outside the repository"
            assert resolved.exists(), f"{doc.name}: broken link {target}"
            if anchor and resolved.suffix == ".md":
                assert anchor in heading_anchors(resolved), f"{doc.name}: no heading for {target}"
        for named in REPO_PATH.findall(text):
            assert (REPO / named).exists(), f"{doc.name} names {named}, which does not exist"


def test_history_lives_in_the_changelog_only() -> None:
    for doc in prose_docs():
        if doc.name in {"CHANGELOG.md", "benchmarks.md"}:  # benchmarks.md is a dated log of runs by design
            continue
        text = doc.read_text(encoding="utf-8").lower()
        for phrase in ("wave 1", "(wave", "before job state", "the old rule", "was 880"):
            assert phrase not in text, f"{doc.name}: {phrase!r} is history: CHANGELOG.md"


def test_the_code_map_names_every_module_of_the_data_path() -> None:
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    for folder in ("pipeline", "engine"):
        for module in sorted((REPO / "consumer" / folder).rglob("*.py")):
            path = module.relative_to(REPO).as_posix()
            if module.name == "__init__.py":
                path = module.parent.relative_to(REPO).as_posix() + "/"
            if path != f"consumer/{folder}/":
                assert f"`{path}`" in text, f"docs/architecture.md does not name {path}"


def test_operations_names_every_metric_the_code_exports() -> None:
    from consumer.gateway.metrics import GatewayMetrics
    from consumer.metrics import Metrics

    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    for registry in (Metrics().registry, GatewayMetrics().registry):
        for family in registry.collect():
            exported = f"{family.name}_total" if family.type == "counter" else family.name
            assert f"`{exported}" in text, f"docs/operations.md, Metrics: {exported}"


# Words in capitals that are neither settings nor names in the code: values, methods, Kafka's own terms.
NOT_NAMES = {"INFO", "POST", "PLAIN", "PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "REBALANCE_IN_PROGRESS", "HEALTHCHECK"}
NAME = re.compile(r"`([A-Z][A-Z0-9]*_[A-Z0-9_]+)(?:=[^`]*)?`")


def test_every_variable_the_docs_name_is_read_somewhere() -> None:
    sources = [REPO / "Dockerfile", REPO / "docker-compose.yml", REPO / "Makefile"]
    for folder in ("consumer", "deploy", "scripts", "bench", ".ci"):
        sources += [p for p in (REPO / folder).rglob("*") if p.is_file() and p.suffix not in {".md", ".pyc"}]
    code = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in sources if p.exists())
    for doc in prose_docs():
        if doc.name == "CHANGELOG.md":  # history may name what is gone
            continue
        for name in set(NAME.findall(doc.read_text(encoding="utf-8"))) - NOT_NAMES - SETTINGS_ENV:
            assert name in code, f"{doc.name} names {name}: no setting, and nothing in the code reads it"


def test_the_bad_input_table_counts_the_corpus_it_describes() -> None:
    corpus = json.loads((REPO / "tests" / "data" / "bad_input_corpus.json").read_text(encoding="utf-8"))
    text = (DOCS / "delivery-and-faults.md").read_text(encoding="utf-8")
    assert f"`tests/data/bad_input_corpus.json` holds {len(corpus['cases'])} cases" in text


def test_the_code_map_names_every_module_once() -> None:
    """docs/architecture.md cannot drift from the tree: every module of consumer/ has a row
    (or is named in one), and no module has two rows."""
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| `consumer/")]
    first_cells = [re.findall(r"`(consumer/[^`]+)`", row.split(" | ")[0]) for row in rows]
    keyed = [path for cell in first_cells for path in cell]
    assert len(keyed) == len(set(keyed)), sorted({p for p in keyed if keyed.count(p) > 1})
    named = {path for row in rows for path in re.findall(r"`(consumer/[^`]+)`", row)}
    modules = set()
    for module in (REPO / "consumer").rglob("*.py"):
        if module.name == "__init__.py":
            continue
        modules.add(module.relative_to(REPO).as_posix())
    missing = sorted(modules - named)
    assert not missing, f"docs/architecture.md does not name {missing}"
    gone = sorted(p for p in named if not (REPO / p).exists())
    assert not gone, f"docs/architecture.md names what is not there: {gone}"
