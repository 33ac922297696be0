"""The machinery under ``texteval`` (click): registration, the async adapter, the Kafka error, the help layout.

``consumer/tools/cli.py`` declares every command with ``@command`` on one
``Texteval`` group; this module holds what they share, so that a command is
only its options and its work:

- a command line is parsed into an ``Invocation`` (nothing runs while
  parsing), and ``Invocation.run`` is the one async adapter: it calls the
  command with the settings, runs a coroutine command on a new event loop
  (``asyncio.run``), and turns a ``KafkaSetupError`` into one line,
  ``COMMAND: cannot use Kafka: ...``, exit 2 (the pre-flight is
  ``consumer.kafka.check_connection``: a command awaits it where it needs the
  broker, and the error comes here);
- ``--help`` keeps the layout people knew from argparse: ``usage:`` with every
  option, ``positional arguments:``, ``options:``, the ``commands:`` list, and
  the top-level description and examples as written (not re-wrapped).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from consumer.kafka import KafkaSetupError

if TYPE_CHECKING:
    from consumer.settings import Settings

CommandFn = Callable[..., int | Coroutine[Any, Any, int]]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 200}  # the terminal's width, as argparse
HELP_LINE = "show this help message and exit"
COLUMN = 20  # the widest option name before its help moves to the next line


@dataclass(frozen=True, slots=True)
class Invocation:
    """A parsed command line: which command, with which options (as argparse's namespace: ``args.port``)."""

    command: str
    params: dict[str, Any]
    fn: CommandFn = field(repr=False)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.params[name]
        except KeyError:
            raise AttributeError(name) from None

    def run(self, settings: Settings) -> int:
        """The async adapter: every command runs here, a coroutine on its own event loop."""
        try:
            result = self.fn(settings, **self.params)
            code = asyncio.run(result) if isinstance(result, Coroutine) else result
        except KafkaSetupError as exc:
            # One wording for every command; the message names the setting to fix.
            print(f"{self.command}: cannot use Kafka: {exc}", file=sys.stderr)
            return 2
        return int(code)


class HelpArgument(click.Argument):
    """A positional argument with a help line (click's have none; argparse's did)."""

    def __init__(self, param_decls: Sequence[str], help: str | None = None, **attrs: Any) -> None:
        super().__init__(param_decls, **attrs)
        self.help = help


def _metavar(param: click.Parameter) -> str:
    if isinstance(param.type, click.Choice):
        return "{" + ",".join(str(choice) for choice in param.type.choices) + "}"
    return (param.name or "").upper()


def _write_usage(formatter: click.HelpFormatter, prog: str, pieces: list[str]) -> None:
    """``usage: PROG PIECE ...``, wrapped between pieces (``[--erased {topic,none}]`` stays whole)."""
    lines = [f"usage: {prog}"]
    indent = " " * (len(lines[0]) + 1)
    for piece in pieces:
        if len(lines[-1]) + 1 + len(piece) > formatter.width and lines[-1] != indent:
            lines.append(indent)
        lines[-1] += ("" if lines[-1] == indent else " ") + piece
    formatter.write("\n".join(lines) + "\n")


def _option_usage(option: click.Option) -> str:
    shown = option.opts[0] if option.is_flag else f"{option.opts[0]} {_metavar(option)}"
    return shown if option.required else f"[{shown}]"


class TextevalCommand(click.Command):
    """One ``texteval`` command; its ``--help`` in argparse's layout."""

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        arguments = [p for p in self.params if isinstance(p, click.Argument)]
        options = [p for p in self.params if isinstance(p, click.Option)]
        pieces = ["[-h]", *(_option_usage(o) for o in options), *(a.name or "" for a in arguments)]
        _write_usage(formatter, ctx.command_path, pieces)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        arguments = [p for p in self.params if isinstance(p, click.Argument)]
        options = [p for p in self.params if isinstance(p, click.Option)]
        self.format_usage(ctx, formatter)
        if self.help:
            formatter.write_paragraph()
            formatter.write_text(self.help)
        positional = [(a.name or "", getattr(a, "help", None) or "") for a in arguments]
        rows = [("-h, --help", HELP_LINE)]
        for option in options:
            name = ", ".join(option.opts) if option.is_flag else f"{', '.join(option.opts)} {_metavar(option)}"
            rows.append((name, option.help or ""))
        # One help column for both lists, as argparse: every term padded to the longest (at most COLUMN).
        column = min(max(len(term) for term, _ in positional + rows), COLUMN)
        for title, section in (("positional arguments", positional), ("options", rows)):
            if section:
                with formatter.section(title):
                    formatter.write_dl([(t.ljust(column) if h else t, h) for t, h in section], col_max=COLUMN)


class Texteval(click.Group):
    """The ``texteval`` group: commands in the order they are registered, help in argparse's layout."""

    command_class = TextevalCommand

    def __init__(self, name: str, help: str, epilog: str | None = None) -> None:
        super().__init__(name=name, help=help, epilog=epilog, context_settings=CONTEXT)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _write_usage(formatter, ctx.command_path, ["[-h]", "COMMAND", "..."])

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.format_usage(ctx, formatter)
        if self.help:
            formatter.write(f"\n{self.help}\n")  # as written: the examples' columns stay
        with formatter.section("options"):
            formatter.write_dl([("-h, --help", HELP_LINE)])
        with formatter.section("commands"):
            formatter.write_text("COMMAND")
            with formatter.indentation():
                formatter.write_dl([(name, cmd.help or "") for name, cmd in self.commands.items()], col_max=16)
        if self.epilog:
            formatter.write(f"\n{self.epilog}\n")

    def command_of(self, name: str, help: str) -> Callable[[CommandFn], CommandFn]:
        """Register ``fn(settings, **options)`` (or ``async def``) as ``texteval NAME``.

        The options are click's decorators under this one; the command is
        parsed into an ``Invocation`` (nothing runs while parsing), which runs it.
        """

        def register(fn: CommandFn) -> CommandFn:
            def parsed(**params: Any) -> Invocation:
                return Invocation(name, params, fn)

            params = list(reversed(getattr(fn, "__click_params__", [])))  # click stacks them bottom-up
            self.add_command(TextevalCommand(name, callback=parsed, params=params, help=help, context_settings=CONTEXT))
            return fn

        return register

    def parse(self, argv: Sequence[str]) -> Invocation:
        """The command a command line names, not run yet. ``--help`` prints and exits 0, a
        usage error exits 2 (``SystemExit``, as argparse's ``parse_args``)."""
        try:
            with self.make_context("texteval", list(argv)) as ctx:
                invocation = self.invoke(ctx)
        except click.exceptions.Exit as exc:
            raise SystemExit(exc.exit_code) from None
        except click.ClickException as exc:
            exc.show()
            raise SystemExit(exc.exit_code) from None
        assert isinstance(invocation, Invocation)
        return invocation

    def help_text(self, command: str | None = None) -> str:
        """``texteval [COMMAND] --help``'s text."""
        with self.make_context("texteval", [], resilient_parsing=True) as ctx:
            if command is None:
                return self.get_help(ctx)
            cmd = self.commands[command]
            with cmd.make_context(command, [], parent=ctx, resilient_parsing=True) as sub:
                return cmd.get_help(sub)
