"""The ``corral`` command line: it parses input, calls the library, and prints; nothing more.

``main`` is the one error boundary: every ``CorralError`` becomes ``Error: <sentence>`` and the
exit code of its class. ``corral sandbox run`` in its plain forms skips typer altogether (see
``corral.cli.sandbox_run``); everything else goes to the typer application in ``corral.cli.app``.
"""

from __future__ import annotations

import sys

from corral.errors import CorralError

__all__ = ["main"]


def main() -> None:
    """The entry point, and the CLI's one error boundary."""
    argv = sys.argv[1:]
    try:
        code = _fast(argv)
        if code is None:
            code = _full(argv)
    except CorralError as err:
        sys.stderr.write(f"Error: {err}\n")
        code = err.exit_code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _fast(argv: list[str]) -> int | None:
    if argv[:2] != ["sandbox", "run"]:
        return None
    from corral.cli import sandbox_run

    args = sandbox_run.parse(argv[2:])
    return None if args is None else sandbox_run.run(args)


def _full(argv: list[str]) -> int:
    import click

    from corral.cli.app import app

    try:
        code = app(argv, prog_name="corral", standalone_mode=False)
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.Abort:
        sys.stderr.write("Aborted.\n")
        return 130
    return code if isinstance(code, int) else 0
