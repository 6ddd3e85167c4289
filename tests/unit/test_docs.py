"""The docs cannot drift: every setting and every command is documented."""

import dataclasses
from pathlib import Path

import typer.main

from corral.cli.app import app
from corral.settings import Settings

DOCS = Path(__file__).parents[2] / "docs"


def test_every_setting_is_documented() -> None:
    text = (DOCS / "settings.md").read_text()
    for field in dataclasses.fields(Settings):
        assert f"| `{field.name}` | `CORRAL_{field.name.upper()}` |" in text, field.name


def command_paths(group: object, prefix: str = "corral") -> list[str]:
    import click

    assert isinstance(group, click.Group)
    paths = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            paths += command_paths(command, f"{prefix} {name}")
        else:
            paths.append(f"{prefix} {name}")
    return paths


def test_every_command_and_option_is_documented() -> None:
    import click

    text = (DOCS / "cli.md").read_text()
    root = typer.main.get_command(app)
    for path in command_paths(root):
        assert f"## `{path}" in text, path
    run = root.commands["sandbox"].commands["run"]  # type: ignore[attr-defined]
    for param in run.params:
        if isinstance(param, click.Option):
            assert f"`{param.opts[0]}" in text, param.opts
