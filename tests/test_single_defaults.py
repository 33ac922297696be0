"""No setting has a second default in code.

A setting's default is written once, beside its field in consumer/settings.py.
A parameter or class field elsewhere in consumer/ named as a setting (its
field name or its variable, lower-cased) takes no default of its own: the
caller passes the section's value. A default that is the settings' own
constant (``DEFAULT_TIE_MARGIN``, the very value the field defaults to) is
the same source, not a second one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import consumer.settings
from consumer.settings import SettingField, setting_fields

CONSUMER = Path(__file__).resolve().parents[1] / "consumer"

# (file, name): why a default there is not a second default of the setting of that name.
ALLOWED = {
    ("consumer/engine/confidence.py", "temperature"): "the calibration's temperature (None: uncalibrated), "
    "not the sampling TEMPERATURE",
    ("consumer/tools/calibrate.py", "temperature"): "the calibration's temperature (1.0: the raw distribution)",
    ("consumer/testing/faults.py", "seed"): "a fault scenario's random seed, not the sampling SEED",
    ("consumer/testing/tcp_proxy.py", "port"): "the test proxy's listening port (0: any free one), not PORT",
    ("consumer/tools/broker.py", "host"): "the embedded broker's listening address, not HOST",
    ("consumer/tools/broker.py", "port"): "the embedded broker's listening port, not PORT",
    ("consumer/gateway/server.py", "host"): "gateway_serving for tests and doctor: loopback; the service passes "
    "GATEWAY_HOST",
    ("consumer/gateway/server.py", "port"): "gateway_serving for tests and doctor: any free port; the service passes "
    "GATEWAY_PORT",
    ("consumer/http.py", "forwarded_allow_ips"): "HttpServer also serves the consumer's side server, which has no "
    "such setting: trust no proxy",
    ("consumer/kafka.py", "fetch_max_wait_ms"): "a TopicReader's wait (aiokafka's default), not the gateway tail's "
    "GATEWAY_FETCH_MAX_WAIT_MS, which the tail passes",
    # consumer/pipeline/ is reshaped by another change of issue 31: these take
    # DEFAULT_MAX_MESSAGE_BYTES / the Kafka section when it lands.
    ("consumer/pipeline/control.py", "max_message_bytes"): "pending the pipeline's reshaping (issue 31)",
    ("consumer/pipeline/jobstate/store.py", "max_message_bytes"): "pending the pipeline's reshaping (issue 31)",
    ("consumer/pipeline/sinks.py", "decisions_topic"): "pending the pipeline's reshaping (issue 31)",
}


def _settings_by_name() -> dict[str, SettingField]:
    fields = setting_fields()
    return {f.name: f for f in fields} | {f.env.lower(): f for f in fields}


def _is_the_settings_constant(default: ast.expr, setting: SettingField) -> bool:
    """``DEFAULT_X`` of consumer.settings, the value the setting's field defaults to."""
    if not (isinstance(default, ast.Name) and default.id.startswith("DEFAULT_")):
        return False
    return getattr(consumer.settings, default.id, object()) == setting.info.default


def _defaults(tree: ast.AST) -> list[tuple[int, str, ast.expr]]:
    """(line, name, default) of every parameter and class-level field with a default."""
    found: list[tuple[int, str, ast.expr]] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            positional = [*a.posonlyargs, *a.args]
            pairs = [*zip(positional[len(positional) - len(a.defaults) :], a.defaults, strict=True)]
            pairs += [(arg, d) for arg, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d is not None]
            found += [(arg.lineno, arg.arg, d) for arg, d in pairs]
        elif isinstance(node, ast.ClassDef):
            found += [
                (st.lineno, st.target.id, st.value)
                for st in node.body
                if isinstance(st, ast.AnnAssign) and st.value is not None and isinstance(st.target, ast.Name)
            ]
    return found


def _second_defaults(source: str, where: str) -> list[str]:
    settings = _settings_by_name()
    return [
        f"{where}:{line}: {name} = {ast.unparse(default)} (setting {settings[name].env})"
        for line, name, default in _defaults(ast.parse(source))
        if name in settings and (where, name) not in ALLOWED and not _is_the_settings_constant(default, settings[name])
    ]


def test_the_scan_finds_parameters_and_fields_named_as_settings() -> None:
    source = (
        "def f(a, tie_margin=0.0, *, max_model_len=2048, b=1): ...\n"
        "class C:\n    screen_answers: bool = True\n    other: int = 3\n"
        "def g(tie_margin=DEFAULT_TIE_MARGIN, review_confidence=DEFAULT_TIE_MARGIN): ...\n"
    )
    assert _second_defaults(source, "x.py") == [
        "x.py:1: tie_margin = 0.0 (setting TIE_MARGIN)",
        "x.py:1: max_model_len = 2048 (setting MAX_MODEL_LEN)",
        "x.py:3: screen_answers = True (setting SCREEN_ANSWERS)",
        "x.py:5: review_confidence = DEFAULT_TIE_MARGIN (setting REVIEW_CONFIDENCE)",  # another setting's constant
    ]


def test_no_setting_has_a_second_default_in_consumer() -> None:
    offenders = []
    for path in sorted(CONSUMER.rglob("*.py")):
        where = path.relative_to(CONSUMER.parent).as_posix()
        if where != "consumer/settings.py":
            offenders += _second_defaults(path.read_text(encoding="utf-8"), where)
    assert offenders == [], "a setting's default is written once, in consumer/settings.py:\n" + "\n".join(offenders)


def test_every_allowance_still_names_a_default() -> None:
    settings = _settings_by_name()
    present = {
        (path.relative_to(CONSUMER.parent).as_posix(), name)
        for path in CONSUMER.rglob("*.py")
        for _, name, _ in _defaults(ast.parse(path.read_text(encoding="utf-8")))
        if name in settings
    }
    assert set(ALLOWED) <= present, f"allowances with nothing left to allow: {sorted(set(ALLOWED) - present)}"
