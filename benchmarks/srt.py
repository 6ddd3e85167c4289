"""corral against Anthropic's sandbox runtime (``srt``, npm ``@anthropic-ai/sandbox-runtime``).

Both as whole processes running ``true``: ``srt --settings FILE -c true`` (no domains allowed, the
workspace writable) and ``corral sandbox run -- true``, with ``node -e 0`` as srt's floor. Runs only
where srt is installed, on PATH or in ``tools/node_modules/.bin`` of the repository.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from benchmarks import REPO
from benchmarks._stats import Budget, Result, Series, check_command, time_commands
from benchmarks.cli_start import cli_environment, corral_script

NAME = "srt"
TITLE = "corral vs Anthropic's srt (`srt -c true`), both as whole processes"

INSTALL = (
    "install it with `npm install --prefix tools @anthropic-ai/sandbox-runtime` in the repository "
    "(tools/ is git-ignored); it also needs bwrap, socat and ripgrep: "
    "`apt-get install -y --no-install-recommends bubblewrap socat ripgrep`"
)


def find_srt() -> str | None:
    local = REPO / "tools" / "node_modules" / ".bin" / "srt"
    if local.is_file():
        return str(local)
    return shutil.which("srt")


def srt_version(srt: str) -> str:
    package = Path(srt).resolve().parent.parent / "package.json"
    try:
        return str(json.loads(package.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "unknown version"


def run(budget: Budget) -> Result:
    result = Result(NAME, TITLE)
    srt = find_srt()
    if srt is None:
        result.skipped = f"srt was not found on PATH or in {REPO / 'tools/node_modules/.bin'}; {INSTALL}"
        return result
    missing = [tool for tool in ("bwrap", "socat", "rg", "node") if shutil.which(tool) is None]
    if missing:
        result.skipped = f"srt is installed but needs {', '.join(missing)} on PATH; {INSTALL}"
        return result
    script = corral_script()
    if script is None:
        result.skipped = "the corral entry point was not found; run `make setup` (pip install -e .)"
        return result
    node = shutil.which("node") or "node"
    with cli_environment() as env, tempfile.TemporaryDirectory(prefix="corral-bench-srt-") as scratch:
        workspace = Path(scratch) / "work"
        workspace.mkdir()
        settings = Path(scratch) / "srt-settings.json"
        settings.write_text(
            json.dumps(
                {
                    "network": {"allowedDomains": [], "deniedDomains": []},
                    "filesystem": {"denyRead": [], "allowWrite": [str(workspace)], "denyWrite": []},
                }
            )
        )
        commands = {
            "corral sandbox run -- true": [str(script), "sandbox", "run", "--", "true"],
            "srt -c true": [srt, "--settings", str(settings), "-c", "true"],
            "node -e 0": [node, "-e", "0"],
        }
        for command in commands.values():
            problem = check_command(command, env=env, cwd=workspace)
            if problem is not None:
                result.error = problem
                return result
        times, how = time_commands(commands, budget, env=env, cwd=workspace)
    series = {label: Series(label, values) for label, values in times.items()}
    result.series = list(series.values())
    corral, srt_run, node_run = (series[label] for label in commands)
    result.notes.append(how)
    result.notes.append(f"srt {srt_version(srt)} at {srt}")
    result.ratios["p50 corral / srt"] = corral.p50 / srt_run.p50
    result.ratios["p50 srt / node -e 0"] = srt_run.p50 / node_run.p50
    result.notes.append("no target: informational (lower ratio corral / srt means corral is faster)")
    return result
