"""Shared pieces: percentiles, bounded timing loops, results, and how they are printed.

Every benchmark returns one ``Result``: the timed series (the subject and its baselines, all
measured in the same run), the ratios between them, and the targets with whether each is met.
Benchmarks never assert; they report.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "Budget",
    "Result",
    "Series",
    "Target",
    "check_command",
    "check_commands",
    "environ_without",
    "fmt_ms",
    "interleaved",
    "percentile",
    "print_result",
    "time_commands",
]


@dataclasses.dataclass(frozen=True)
class Budget:
    """How long one timing loop may run: whichever limit comes first ends it."""

    max_iterations: int = 200
    max_seconds: float = 60.0
    warmup: int = 5
    process_runs: int = 30
    """Runs per command for whole-process benchmarks (hyperfine ``--runs``)."""
    process_warmup: int = 3


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between the closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclasses.dataclass
class Series:
    """The wall-clock times of one measured thing, in seconds."""

    label: str
    times: list[float]

    @property
    def p50(self) -> float:
        return percentile(self.times, 50)

    @property
    def p90(self) -> float:
        return percentile(self.times, 90)

    @property
    def mean(self) -> float:
        return sum(self.times) / len(self.times) if self.times else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "n": len(self.times),
            "p50_ms": _ms(self.p50),
            "p90_ms": _ms(self.p90),
            "mean_ms": _ms(self.mean),
            "min_ms": _ms(min(self.times)) if self.times else None,
            "max_ms": _ms(max(self.times)) if self.times else None,
        }


@dataclasses.dataclass(frozen=True)
class Target:
    """``value <= limit`` is the goal."""

    name: str
    value: float
    limit: float
    unit: str = ""

    @property
    def met(self) -> bool:
        return self.value <= self.limit

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": round(self.value, 4),
            "limit": self.limit,
            "unit": self.unit,
            "met": self.met,
        }


@dataclasses.dataclass
class Result:
    """What one benchmark found."""

    name: str
    title: str
    series: list[Series] = dataclasses.field(default_factory=list)
    ratios: dict[str, float] = dataclasses.field(default_factory=dict)
    targets: list[Target] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    tables: list[tuple[str, list[tuple[str, ...]]]] = dataclasses.field(default_factory=list)
    """Free-form tables (title, rows; the first row is the header), for the profile."""
    skipped: str | None = None
    error: str | None = None

    @property
    def met(self) -> bool | None:
        if self.skipped or self.error or not self.targets:
            return None
        return all(t.met for t in self.targets)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "skipped": self.skipped,
            "error": self.error,
            "met": self.met,
            "series": [s.as_dict() for s in self.series],
            "ratios": {k: round(v, 4) for k, v in self.ratios.items()},
            "targets": [t.as_dict() for t in self.targets],
            "notes": self.notes,
            "tables": [{"title": title, "rows": rows} for title, rows in self.tables],
        }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def interleaved(
    subjects: Mapping[str, Callable[[], object]], budget: Budget, *, seed: int = 0
) -> tuple[dict[str, list[float]], int, float]:
    """Time each callable once per round, in a shuffled order, until the budget is spent.

    Interleaving puts the subject and its baselines under the same machine noise. Returns the
    times per label, the number of rounds and the seconds the loop took (warm-up excluded).
    """
    for _ in range(budget.warmup):
        for call in subjects.values():
            call()
    order = list(subjects)
    shuffle = random.Random(seed).shuffle
    times: dict[str, list[float]] = {label: [] for label in subjects}
    start = time.perf_counter()
    rounds = 0
    while rounds < budget.max_iterations and time.perf_counter() - start < budget.max_seconds:
        shuffle(order)
        for label in order:
            call = subjects[label]
            t0 = time.perf_counter()
            call()
            times[label].append(time.perf_counter() - t0)
        rounds += 1
    return times, rounds, time.perf_counter() - start


def time_commands(
    commands: Mapping[str, Sequence[str]],
    budget: Budget,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[dict[str, list[float]], str]:
    """Time whole processes: with ``hyperfine -N`` when installed, else a subprocess loop.

    Returns the times per label and a sentence naming the tool and the runs.
    """
    hyperfine = shutil.which("hyperfine")
    if hyperfine is not None:
        with tempfile.TemporaryDirectory(prefix="corral-bench-hf-") as scratch:
            export = Path(scratch) / "hyperfine.json"
            argv = [
                hyperfine,
                "-N",
                "--style",
                "none",
                "--warmup",
                str(budget.process_warmup),
                "--runs",
                str(budget.process_runs),
                "--export-json",
                str(export),
                *(shlex.join(command) for command in commands.values()),
            ]
            # hyperfine has no time budget of its own; give it ten times ours before giving up.
            done = subprocess.run(
                argv,
                env=None if env is None else dict(env),
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=budget.max_seconds * 10,
                check=False,
            )
            if done.returncode != 0:
                msg = f"hyperfine failed ({done.returncode}): {done.stderr.strip()[-800:]}"
                raise RuntimeError(msg)
            data = json.loads(export.read_text())
        times = {label: list(run["times"]) for label, run in zip(commands, data["results"], strict=True)}
        how = (
            f"hyperfine -N, {budget.process_warmup} warm-up + {budget.process_runs} runs per command (not interleaved)"
        )
        return times, how
    subjects = {label: _process_runner(command, env, cwd) for label, command in commands.items()}
    loop_budget = dataclasses.replace(budget, max_iterations=budget.process_runs, warmup=budget.process_warmup)
    times, rounds, _ = interleaved(subjects, loop_budget)
    return times, f"subprocess loop (hyperfine not installed), {rounds} interleaved rounds"


def _process_runner(command: Sequence[str], env: Mapping[str, str] | None, cwd: Path | None) -> Callable[[], object]:
    argv = list(command)
    environ = None if env is None else dict(env)

    def run() -> object:
        return subprocess.run(
            argv, env=environ, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
        )

    return run


def check_commands(
    commands: Mapping[str, Sequence[str]], *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> str | None:
    """Run each command once (this also fills caches); what went wrong with the first that failed, by label."""
    for label, command in commands.items():
        problem = check_command(command, env=env, cwd=cwd)
        if problem is not None:
            return f"{label}: {problem}"
    return None


def check_command(
    command: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> str | None:
    """Run ``command`` once; ``None`` if it exited 0, else what went wrong (hyperfine would abort)."""
    try:
        done = subprocess.run(
            list(command),
            env=None if env is None else dict(env),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{shlex.join(command)}: {err}"
    if done.returncode != 0:
        return f"{shlex.join(command)} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-600:]}"
    return None


def print_result(result: Result) -> None:
    """Print one result as a small human-readable report."""
    print(f"\n== {result.name}: {result.title}")
    if result.skipped:
        print(f"   SKIPPED: {result.skipped}")
        return
    if result.error:
        print(f"   ERROR: {result.error}")
    for note in result.notes:
        print(f"   {note}")
    if result.series:
        width = max(len(s.label) for s in result.series)
        print(f"   {'':<{width}}  {'p50':>10}  {'p90':>10}  {'mean':>10}  {'n':>4}")
        for s in result.series:
            figures = f"{fmt_ms(s.p50):>10}  {fmt_ms(s.p90):>10}  {fmt_ms(s.mean):>10}  {len(s.times):>4}"
            print(f"   {s.label:<{width}}  {figures}")
    for name, value in result.ratios.items():
        print(f"   ratio {name}: {value:.2f}")
    for target in result.targets:
        verdict = "met" if target.met else "NOT MET"
        measured = f"{target.value:.2f}{target.unit}"
        print(f"   target {target.name} <= {target.limit:g}{target.unit}: {measured} -> {verdict}")
    for title, rows in result.tables:
        print(f"   -- {title}")
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            cells = [
                cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ]
            print("   " + "  ".join(cells))


def environ_without(*names: str) -> dict[str, str]:
    """This process's environment minus ``names``."""
    return {k: v for k, v in os.environ.items() if k not in names}
