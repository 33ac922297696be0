"""Pydantic validation errors as something safe to show anywhere.

Pydantic's own message quotes the rejected input, and the input here is a
minor's text: dead-letter details, file errors, command-line messages and
the gateway's 422 bodies name the field and say what is wrong, never what
was there. Every place that shows a validation error goes through here.
"""

from __future__ import annotations

from pydantic import ValidationError
from pydantic_core import ErrorDetails


def safe_errors(exc: ValidationError) -> list[ErrorDetails]:
    """The errors without the input (``include_input=False``), the docs URL or
    the context (which can echo limits and patterns)."""
    return exc.errors(include_input=False, include_url=False, include_context=False)


def validation_problems(exc: ValidationError, *, root: str = "request", limit: int = 5) -> str:
    """``items.3.respuesta: String should have at most 20000 characters; ...``:
    the first ``limit`` errors as ``location: message``; ``root`` names an
    error of the whole value."""
    errors = safe_errors(exc)
    shown = [f"{'.'.join(str(part) for part in error['loc']) or root}: {error['msg']}" for error in errors[:limit]]
    more = f" (+{len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(shown) + more


def json_error_message(exc: ValidationError) -> str | None:
    """Pydantic's message when the value was not JSON at all (it quotes no input), else None."""
    errors = safe_errors(exc)
    return errors[0]["msg"] if errors and errors[0]["type"] == "json_invalid" else None
