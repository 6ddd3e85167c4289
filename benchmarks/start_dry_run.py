"""``corral start AGENT --dry-run`` as a whole process: interpreter, imports, manifest, plan, exit.

Baseline in the same run: ``python -c pass`` with the interpreter the ``corral`` script runs on.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks._stats import Budget, Result, Series, Target, check_commands, time_commands
from benchmarks.cli_start import cli_environment, corral_script, script_interpreter

NAME = "start_dry_run"
TITLE = "`corral start AGENT --dry-run` as a whole process"

MAX_P50_MS = 300.0

MANIFEST = """\
[agents.coder]
bottle = "dev"
env = ["HOME"]
prompt = "Be brief."
ssh = [{ name = "gh", host = "github.com", user = "git" }]

[bottles.dev]
allow = ["pypi.org", "*.pythonhosted.org"]
memory = "2G"
"""


def run(budget: Budget) -> Result:
    result = Result(NAME, TITLE)
    script = corral_script()
    if script is None:
        result.skipped = "the corral entry point was not found; run `make setup` (pip install -e .)"
        return result
    python = script_interpreter(script)
    subject = [str(script), "start"]
    commands = {
        "corral start coder --dry-run": [*subject, "coder", "--dry-run"],
        "python -c pass": [python, "-c", "pass"],
    }
    with cli_environment() as env, tempfile.TemporaryDirectory(prefix="corral-bench-start-") as cwd:
        (Path(cwd) / "corral.toml").write_text(MANIFEST)
        result.error = check_commands(commands, env=env, cwd=Path(cwd))
        if result.error is not None:
            return result
        times, how = time_commands(commands, budget, env=env, cwd=Path(cwd))
    series = {label: Series(label, values) for label, values in times.items()}
    result.series = list(series.values())
    start, floor = (series[label] for label in commands)
    result.notes.append(how)
    result.ratios["p50 start --dry-run / python -c pass"] = start.p50 / floor.p50
    result.targets = [Target("p50 corral start --dry-run", start.p50 * 1000, MAX_P50_MS, " ms")]
    return result
