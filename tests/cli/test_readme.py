"""The README documents every command and option of the CLI: a new option without a line in it
fails here."""

from __future__ import annotations

from pathlib import Path

import click
import typer.main

from aidsafe.cli.app import app

README = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")


def _options(command: click.Command, path: list[str]) -> list[tuple[str, str]]:
    found = [
        (" ".join(path), flag)
        for parameter in command.params
        for flag in parameter.opts
        if flag.startswith("--") and flag != "--help"
    ]
    for name, sub in getattr(command, "commands", {}).items():
        found += _options(sub, [*path, name])
    return found


def test_every_command_and_option_is_in_the_readme() -> None:
    root = typer.main.get_command(app)
    options = _options(root, ["aidsafe"])
    assert len(options) > 100  # the walk reached the subcommands
    assert [(where, flag) for where, flag in options if flag not in README] == []
    commands = getattr(root, "commands", {})
    assert [name for name in commands if f"aidsafe {name}" not in README] == []
