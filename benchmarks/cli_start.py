"""``corral sandbox run -- true`` as a whole process: interpreter start, imports, sandbox, exit.

Baselines in the same run: ``python -c pass`` with the interpreter the ``corral`` script runs
on (the floor for any Python CLI), and the bare bwrap command as a process (the floor for any
sandbox). What is left over is corral's own cost: imports, option parsing and the run itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from benchmarks import BARE_BWRAP, REPO
from benchmarks._stats import Budget, Result, Series, Target, check_commands, environ_without, fmt_ms, time_commands

NAME = "cli_start"
TITLE = "`corral sandbox run -- true` as a whole process"

MAX_P50_MS = 150.0


def corral_script() -> Path | None:
    """The ``corral`` entry point of the interpreter running the benchmarks (the venv's), else PATH's."""
    beside = Path(sys.executable).parent / "corral"
    if beside.is_file():
        return beside
    for candidate in (REPO / ".venv" / "bin" / "corral", shutil.which("corral")):
        if candidate is not None and Path(candidate).is_file():
            return Path(candidate)
    return None


def script_interpreter(script: Path) -> str:
    """The interpreter named on the script's ``#!`` line (what ``corral`` really starts)."""
    with contextlib.suppress(OSError, UnicodeDecodeError), script.open() as fh:
        first = fh.readline()
        if first.startswith("#!"):
            parts = first[2:].split()
            if parts and Path(parts[0]).is_file():
                return parts[0]
    return sys.executable


@contextlib.contextmanager
def cli_environment() -> Iterator[dict[str, str]]:
    """The environment the CLI runs in: a scratch ``CORRAL_HOME``, and bytecode caching as users have it.

    ``PYTHONDONTWRITEBYTECODE`` is dropped: with it set, every call recompiles any module whose
    ``.pyc`` is stale or missing, which users' installs do not do.
    """
    with tempfile.TemporaryDirectory(prefix="corral-bench-clihome-") as home:
        env = environ_without("PYTHONDONTWRITEBYTECODE", "CORRAL_CONFIG")
        env["CORRAL_HOME"] = home
        yield env


def run(budget: Budget) -> Result:
    result = Result(NAME, TITLE)
    script = corral_script()
    if script is None:
        result.skipped = "the corral entry point was not found; run `make setup` (pip install -e .)"
        return result
    if shutil.which("bwrap") is None:
        result.skipped = "bwrap is not installed (apt-get install --no-install-recommends bubblewrap)"
        return result
    python = script_interpreter(script)
    commands = {
        "corral sandbox run -- true": [str(script), "sandbox", "run", "--", "true"],
        "python -c pass": [python, "-c", "pass"],
        "bare bwrap (process)": list(BARE_BWRAP),
    }
    with cli_environment() as env, tempfile.TemporaryDirectory(prefix="corral-bench-cwd-") as cwd:
        result.error = check_commands(commands, env=env, cwd=Path(cwd))  # also fills the seccomp cache and the .pyc
        if result.error is not None:
            return result
        times, how = time_commands(commands, budget, env=env, cwd=Path(cwd))
    series = {label: Series(label, values) for label, values in times.items()}
    result.series = list(series.values())
    corral, python_pass, bare = (series[label] for label in commands)
    result.notes.append(how)
    result.notes.append(f"interpreter: {python}")
    if "PYTHONDONTWRITEBYTECODE" in os.environ:
        result.notes.append("PYTHONDONTWRITEBYTECODE is set here; it was dropped for the measured commands")
    result.ratios["p50 corral / python -c pass"] = corral.p50 / python_pass.p50
    result.ratios["p50 corral / bare bwrap"] = corral.p50 / bare.p50
    own = corral.p50 - python_pass.p50 - bare.p50
    result.notes.append(f"corral's own cost at p50 (corral - python -c pass - bare bwrap): {fmt_ms(own)}")
    result.targets = [Target("p50 corral sandbox run -- true", corral.p50 * 1000, MAX_P50_MS, " ms")]
    return result
