"""`texteval`'s machinery: a command is one decorated function, run by one adapter, and
every command says a broker it cannot use in the same words, with the same exit code."""

from __future__ import annotations

import asyncio

import click
import pytest

from consumer.kafka import KafkaSetupError
from consumer.settings import Settings
from consumer.tools.cli import main
from consumer.tools.commandline import Texteval
from tests.helpers import DATA, REPO

AGREEMENT = REPO / "tests" / "data"


def toy() -> tuple[Texteval, list[tuple[str, object]]]:
    group = Texteval("texteval", help="A toy.", epilog="examples:\n  texteval hello")
    ran: list[tuple[str, object]] = []

    @group.command_of("hello", help="say hello")
    @click.argument("name")
    @click.option("--times", type=int, default=1, help="how often")
    @click.option("--loud", is_flag=True)
    def hello(settings: Settings, name: str, times: int, loud: bool) -> int:
        ran.append(("hello", (name, times, loud)))
        return 0

    @group.command_of("wait", help="an async command")
    @click.option("--code", type=int, default=3)
    async def wait(settings: Settings, code: int) -> int:
        ran.append(("wait", asyncio.get_running_loop() is not None))
        await asyncio.sleep(0)
        return code

    @group.command_of("broker-down", help="needs Kafka")
    async def broker_down(settings: Settings) -> int:
        raise KafkaSetupError("unreachable", "cannot connect to 127.0.0.1:1 (KAFKA_BOOTSTRAP_SERVERS)")

    return group, ran


def test_a_command_is_parsed_without_running_then_run_by_the_adapter(capsys: pytest.CaptureFixture[str]) -> None:
    group, ran = toy()
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    parsed = group.parse(["hello", "ada", "--times", "2"])
    assert (parsed.command, parsed.name, parsed.times, parsed.loud) == ("hello", "ada", 2, False) and ran == []
    assert parsed.run(settings) == 0 and ran == [("hello", ("ada", 2, False))]
    # An async command runs on the adapter's own loop and its code is the exit code.
    assert group.parse(["wait", "--code", "5"]).run(settings) == 5 and ran[-1] == ("wait", True)
    assert group.parse(["broker-down"]).run(settings) == 2
    assert (
        capsys.readouterr().err
        == "broker-down: cannot use Kafka: cannot connect to 127.0.0.1:1 (KAFKA_BOOTSTRAP_SERVERS)\n"
    )


def test_help_and_usage_errors_exit_as_argparse_did(capsys: pytest.CaptureFixture[str]) -> None:
    group, ran = toy()
    for argv in (["-h"], ["hello", "--help"]):
        with pytest.raises(SystemExit) as exited:
            group.parse(argv)
        assert exited.value.code == 0
    top, command = capsys.readouterr().out.split("usage: texteval hello", 1)
    assert top.startswith("usage: texteval [-h] COMMAND ...\n\nA toy.\n")
    assert "commands:\n  COMMAND\n    hello" in top and top.rstrip().endswith("examples:\n  texteval hello")
    assert command.startswith(" [-h] [--times TIMES] [--loud] name\n")
    assert "positional arguments:" in command and "--times TIMES" in command and "how often" in command
    for argv in (["hello"], ["nope"], ["wait", "--code", "x"], []):
        with pytest.raises(SystemExit) as exited:
            group.parse(argv)
        assert exited.value.code == 2, argv
    assert ran == []


@pytest.mark.parametrize(
    "argv",
    [
        ["submit", str(DATA / "sample_items.csv")],
        ["cancel", "school-1/j-1"],
        ["erase", "school-1/j-1", "--admin"],
        ["explain", "school-1/j-1#0"],
        ["correct", str(AGREEMENT / "agreement_corrections.jsonl")],
        ["agreement"],
        ["export-training", "--out", "never-written.jsonl"],
    ],
)
def test_every_command_that_needs_the_broker_says_so_in_one_line(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # nothing listens there
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{argv[0]}: cannot use Kafka: ") and "127.0.0.1:1" in err, err
    assert err.count("\n") == 1, err
