"""``corral sandbox run`` is parsed twice over: a fast path with no CLI framework, and typer. They must agree."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import pytest
import typer.main

from corral.cli import sandbox_run
from corral.cli.app import app
from corral.cli.sandbox_run import FLAGS, RunArgs, parse


def typer_options() -> set[str]:
    run = typer.main.get_command(app).commands["sandbox"].commands["run"]  # type: ignore[attr-defined]
    return {opt for param in run.params if isinstance(param, click.Option) for opt in param.opts}


def test_the_fast_parser_knows_every_option() -> None:
    assert set(FLAGS) == typer_options()
    assert set(FLAGS.values()) == {f.name for f in dataclasses.fields(RunArgs)} - {"command"}


def via_typer(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> RunArgs:
    seen: list[RunArgs] = []
    monkeypatch.setattr(sandbox_run, "run", lambda args: seen.append(args) or 0)
    app(["sandbox", "run", *argv], prog_name="corral", standalone_mode=False)
    (args,) = seen
    return args


def normal(args: RunArgs) -> RunArgs:
    """Paths as typer hands them over (``./x`` and ``x`` are one path)."""

    def path(value: str | None) -> str | None:
        return None if value is None else str(Path(value))

    return dataclasses.replace(
        args,
        workspace=path(args.workspace),
        audit_log=path(args.audit_log),
        ro=[str(Path(p)) for p in args.ro],
        deny=[str(Path(p)) for p in args.deny],
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--", "true"],
        ["--", "sh", "-c", "echo --memory 1G"],
        ["-w", "./ws", "--ro", "/opt", "--ro=/srv", "-e", "A", "--env", "B=2", "--", "make", "-j2"],
        ["--memory", "512M", "--pids=64", "--cpus", "0.5", "--timeout", "30s", "--", "true"],
        ["--allow-domain", "x.com", "--allow-domain", "*.y.org:443", "--deny-domain", "z.x.com", "--", "curl", "x"],
        ["--audit-log", "a.jsonl", "--deny", "/etc/secret", "--workspace=/w", "--", "ls", "--", "-la"],
        ["--memory", "-5M", "--", "true"],  # a value that looks odd is still a value; the limit check refuses it
    ],
)
def test_both_parsers_read_plain_forms_alike(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    fast = parse(argv)
    assert fast is not None
    assert normal(fast) == normal(via_typer(argv, monkeypatch))


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["true"],  # no --
        ["--"],  # no command
        ["--help"],
        ["--bogus", "--", "true"],
        ["--memory", "--pids", "4", "--", "true"],  # a flag where a value belongs
        ["--memory"],
        ["-wdir", "--", "true"],
    ],
)
def test_anything_else_goes_to_typer(argv: list[str]) -> None:
    assert parse(argv) is None
