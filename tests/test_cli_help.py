"""`modelport COMMAND --help` reads as prose: paragraphs wrap at the terminal's width, never at the docstring's
line breaks, and every command shows examples that its own parser accepts."""

from __future__ import annotations

import itertools
import shlex

import pytest
import typer.main
from typer.testing import CliRunner

from modelport.cli import app
from modelport.clihelp import EXAMPLES

BOX = "╭│╰"


def _paths(command, path=()):
    yield path
    for name, sub in (getattr(command, "commands", None) or {}).items():
        yield from _paths(sub, (*path, name))


ROOT = typer.main.get_command(app)
PATHS = list(_paths(ROOT))


def _help(path: tuple[str, ...], columns: int) -> list[str]:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(columns), "TERMINAL_WIDTH": None})
    assert result.exit_code == 0, result.output
    return [line.rstrip() for line in result.output.splitlines()]


def _description(lines: list[str]) -> list[str]:
    """The help text between the usage line and the first box."""
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("Usage:")) + 1
    end = next(i for i, line in enumerate(lines) if line.strip() and line.lstrip()[0] in BOX)
    return [line.strip() for line in lines[start:end]]


def _examples(lines: list[str]) -> list[str]:
    """The example command lines, continuation lines joined."""
    block = lines[next(i for i, line in enumerate(lines) if line.strip() == "Examples:") + 1:]
    commands, current = [], ""
    for line in (raw.strip() for raw in block):
        if not line or line.startswith("#"):
            continue
        current += line.removesuffix("\\").strip() + " "
        if not line.endswith("\\"):
            commands.append(current.strip())
            current = ""
    return commands


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "modelport")
def test_help_paragraphs_wrap_at_the_terminal_width_only(path):
    wide = _description(_help(path, 400))
    paragraphs = [line for line in wide if line]
    assert paragraphs, "a command without help text"
    # on a wide terminal every paragraph is one line: no docstring line break survives mid-sentence
    assert all(a == "" or b == "" for a, b in itertools.pairwise(wide)), "\n".join(wide)
    # on a narrow one the same words wrap, and rejoined they are the same paragraphs
    narrow = _description(_help(path, 60))
    rejoined = " ".join(" ".join(narrow).split())
    assert rejoined == " ".join(" ".join(paragraphs).split())


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "modelport")
def test_every_command_has_examples_its_parser_accepts(path):
    assert " ".join(path) in EXAMPLES
    examples = _examples(_help(path, 80))
    assert examples and all(e.startswith(" ".join(("modelport", *path))) for e in examples), examples
    for example in examples:
        args = shlex.split(example)[1:]
        command, name = ROOT, "modelport"
        while args and args[0] in (getattr(command, "commands", None) or {}):
            name = args.pop(0)
            command = command.commands[name]
        if "--help" in args:
            continue
        with command.make_context(name, args) as ctx:  # raises on an unknown option or a missing argument
            assert ctx.params


def test_example_lines_fit_an_80_column_terminal():
    for path in PATHS:
        lines = _help(path, 80)
        block = lines[next(i for i, line in enumerate(lines) if line.strip() == "Examples:"):]
        assert all(len(line) <= 80 for line in block)
        # no example line was wrapped by the terminal: each is a comment, a command or a continuation
        assert all(line.strip().startswith(("#", "modelport", "-", "Examples:")) for line in block if line.strip())
