"""The pipeline's parts are joined by objects, not callbacks: no module under
consumer/pipeline/ hands a lambda, or a bound method of one of its parts, to a
constructor. A callback hides who depends on whom (``is_member=lambda:
self._rebalance.member`` read an attribute assigned two statements later);
an object passed whole shows it in the signature. Nor does a part take the whole
``Settings``: it is given the sections it reads. Read from the source with
``ast``, so the rule cannot quietly come back."""

from __future__ import annotations

import ast
from pathlib import Path

PIPELINE = Path(__file__).resolve().parents[2] / "consumer" / "pipeline"
CONSUMER = PIPELINE.parent


def _project() -> tuple[set[str], set[str]]:
    """The project's class names, and the names that are only ever its methods: a name
    that is also a field or an attribute somewhere (``failed``, ``record``) is left out,
    since ``x.failed`` may be a value. Properties are values too."""
    classes: set[str] = set()
    methods: set[str] = set()
    values: set[str] = set()
    for path in CONSUMER.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                classes.add(node.name)
                for item in node.body:
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        values.add(item.target.id)
                    elif isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        decorators = {d.id for d in item.decorator_list if isinstance(d, ast.Name)}
                        (values if "property" in decorators else methods).add(item.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                values.add(node.attr)
    return classes, methods - values


def _callee(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _offences(source: str, where: str, classes: set[str], methods: set[str]) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, where)):
        if not isinstance(node, ast.Call) or _callee(node) not in classes:
            continue  # only the constructors of the project's own components
        name = _callee(node)
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            if isinstance(arg, ast.Lambda):
                found.append(f"{where}:{arg.lineno}: a lambda into {name}()")
            elif isinstance(arg, ast.Attribute) and arg.attr in methods:
                found.append(f"{where}:{arg.lineno}: the method {ast.unparse(arg)} into {name}()")
    return found


def test_no_pipeline_module_passes_a_lambda_or_a_bound_method_into_a_constructor() -> None:
    classes, methods = _project()
    offences = [
        offence
        for path in sorted(PIPELINE.rglob("*.py"))
        for offence in _offences(path.read_text(), str(path.relative_to(CONSUMER.parent)), classes, methods)
    ]
    assert offences == []


def test_the_check_sees_both_kinds_of_callback() -> None:
    source = "w = Watchdog(c, is_member=lambda: r.member, on_died=app.stop)\nx = f(lambda: 1, app.stop)\n"
    assert _offences(source, "m.py", {"Watchdog"}, {"stop"}) == [
        "m.py:1: a lambda into Watchdog()",
        "m.py:1: the method app.stop into Watchdog()",
    ]


def _whole_settings(source: str, where: str) -> list[str]:
    """Constructors of classes that take the whole ``Settings`` (any annotation naming it)."""
    found = []
    for node in ast.walk(ast.parse(source, where)):
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if not isinstance(item, ast.FunctionDef) or item.name != "__init__":
                continue
            for arg in [*item.args.posonlyargs, *item.args.args, *item.args.kwonlyargs]:
                names = {n.id for n in ast.walk(arg.annotation) if isinstance(n, ast.Name)} if arg.annotation else set()
                if "Settings" in names:
                    found.append(f"{where}:{arg.lineno}: {node.name}({arg.arg}: Settings)")
    return found


def test_pipeline_parts_are_given_their_settings_sections_not_the_whole_settings() -> None:
    """A part is given the sections it reads (``settings.jobs``, ``settings.kafka``, ...) or plain
    values; only the wiring's functions (``pipeline/service.py``) hold the whole ``Settings``, so a
    part's signature says which settings can change what it does."""
    offences = [
        offence
        for path in sorted(PIPELINE.rglob("*.py"))
        for offence in _whole_settings(path.read_text(), str(path.relative_to(CONSUMER.parent)))
    ]
    assert offences == []


def test_the_settings_check_sees_a_constructor_taking_the_whole_settings() -> None:
    source = (
        "class Work:\n    def __init__(self, c: C, settings: Settings, *, jobs: JobsSettings) -> None: ...\n"
        "class Fine:\n    def __init__(self, kafka: KafkaSettings) -> None: ...\n"
    )
    assert _whole_settings(source, "m.py") == ["m.py:2: Work(settings: Settings)"]
