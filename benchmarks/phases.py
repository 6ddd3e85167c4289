"""Where the time goes: one sandbox run split into its phases, and the CLI split into its parts.

Not part of the default run (``python -m benchmarks phases``). It wraps corral's internal
functions with timers for the duration of the loop, so it reaches into private names; any that a
later version renamed are skipped and listed, never an error.

1. Library: ``BwrapSandbox.run`` of ``true`` with the same limits as ``sandbox_spawn``, in an empty
   workspace, in a repository-like one (2,000 files, a ``.git`` with hooks) and (as root, with
   socat) in an empty one with the network bridge of ``bridged_spawn``, with the
   exclusive time of each phase (nested phases are subtracted from their callers).
2. CLI: ``python -c pass`` -> ``import corral.cli`` -> ``corral version`` -> ``corral sandbox run
   -- true``, and the import time by top-level package from ``python -X importtime``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks._stats import Budget, Result, percentile, time_commands
from benchmarks.cli_start import cli_environment, corral_script, script_interpreter

NAME = "phases"
TITLE = "where the time of one sandbox run and of one CLI call goes (profile)"

# (module, attribute path, what the phase is)
PHASES = (
    ("corral.sandbox.bwrap", "BwrapSandbox.check", "check (bwrap on PATH, spec sane)"),
    ("corral.sandbox.plan", "real_paths", "resolve the spec's real paths"),
    ("corral.sandbox.paths", "present", "protected-path scan (before and after the run)"),
    ("corral.sandbox.paths", "find_protected", "protected paths to bind, from the scan"),
    ("corral.sandbox.paths", "plan_layout", "plan layout (secret masks, system dirs)"),
    ("corral.sandbox.bwrap", "resolve_command", "resolve the command inside"),
    ("corral.sandbox.seccomp", "load_bpf", "seccomp filter from the cache"),
    ("corral.sandbox.bwrap", "BwrapSandbox.reap", "reap leftovers of free slots"),
    ("corral.sandbox.slots", "acquire", "slot lock acquisition"),
    ("corral.sandbox.bwrap", "BwrapSandbox._reap_slot", "reap the slot's leftovers"),
    ("corral.sandbox.cgroups", "CgroupDriver.create", "cgroup mkdir + limit writes"),
    ("corral.sandbox.slots", "take_owner", "workspace ownership walk (hand over)"),
    ("corral.sandbox.staging", "prepare", "staging mount points"),
    ("corral.sandbox.bwrap", "build_argv", "build the bwrap argv"),
    ("corral.sandbox.process", "Supervised.__init__", "spawn bwrap: (v)fork, uid drop, exec"),
    ("corral.sandbox.bwrap", "_sandbox_pid", "wait for bwrap's sandbox pid (--info-fd)"),
    ("corral.sandbox.cgroups", "Cgroup.join", "cgroup join of the sandbox (and relay) pid"),
    ("corral.sandbox.bridge", "start_relay", "relay spawn (socat, in the sandbox's network)"),
    ("corral.sandbox.bridge", "wait_listening", "wait until the relay listens"),
    ("corral.sandbox.bwrap", "_open_gate", "open the gate (--block-fd)"),
    ("corral.sandbox.process", "Supervised.pump", "wait: bwrap runs true, exits"),
    ("corral.sandbox.bridge", "stop_relay", "stop the relay"),
    ("corral.sandbox.cgroups", "Cgroup.oom_kills", "read OOM kill count"),
    ("corral.sandbox.cgroups", "Cgroup.peak_memory", "read peak memory"),
    ("corral.sandbox.cgroups", "Cgroup.kill", "cgroup kill sweep (read procs)"),
    ("corral.sandbox.cgroups", "Cgroup.remove", "cgroup rmdir (EBUSY retries)"),
    ("corral.sandbox.slots", "restore_owner", "workspace ownership walk (give back)"),
    ("corral.sandbox.staging", "clear", "staging cleanup"),
    ("corral.sandbox.paths", "remove_created", "remove protected paths the run created"),
    ("corral.sandbox.slots", "Slot.release", "slot release"),
)


class _Timers:
    """Exclusive (self) time per phase: time spent in nested phases is taken off the caller."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)
        self._current: dict[str, float] = defaultdict(float)
        self._stack: list[float] = []  # time spent in children of each open frame

    def wrap(self, label: str, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._stack.append(0.0)
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                children = self._stack.pop()
                self._current[label] += elapsed - children
                if self._stack:
                    self._stack[-1] += elapsed

        return timed

    def end_run(self, total: float) -> None:
        accounted = sum(self._current.values())
        for label, value in self._current.items():
            self.samples[label].append(value)
        self.samples["(everything else in run)"].append(total - accounted)
        self.samples["TOTAL"].append(total)
        self._current.clear()


@contextmanager
def _instrumented(timers: _Timers) -> Iterator[list[str]]:
    """Wrap every phase that exists; yield the ones that do not; restore everything afterwards."""
    undo: list[tuple[Any, str, Any]] = []
    missing: list[str] = []
    try:
        for module_name, path, label in PHASES:
            try:
                owner: Any = importlib.import_module(module_name)
                *parents, attr = path.split(".")
                for parent in parents:
                    owner = getattr(owner, parent)
                original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
            except (ImportError, AttributeError, KeyError):
                missing.append(f"{module_name}.{path}")
                continue
            setattr(owner, attr, timers.wrap(label, original))
            undo.append((owner, attr, original))
        yield missing
    finally:
        for owner, attr, original in reversed(undo):
            setattr(owner, attr, original)


def make_repo_like(root: Path, dirs: int = 20, subdirs: int = 10, files: int = 10) -> int:
    """A workspace shaped like a small repository: nested sources and a ``.git`` with hooks."""
    count = 0
    for d in range(dirs):
        for s in range(subdirs):
            directory = root / f"pkg{d}" / f"mod{s}"
            directory.mkdir(parents=True)
            for f in range(files):
                (directory / f"file{f}.py").write_text("x = 1\n")
                count += 1
    (root / ".git" / "hooks").mkdir(parents=True)
    (root / ".git" / "config").write_text("[core]\n")
    (root / ".git" / "hooks" / "pre-commit.sample").write_text("#!/bin/sh\n")
    (root / ".vscode").mkdir()
    return count


def _library_table(budget: Budget, workspace_kind: str) -> tuple[list[tuple[str, ...]], list[str]]:
    from corral.sandbox.bwrap import BwrapSandbox
    from corral.sandbox.spec import Limits, SandboxSpec
    from corral.settings import Settings

    notes: list[str] = []
    timers = _Timers()
    with (
        tempfile.TemporaryDirectory(prefix="corral-bench-home-") as home,
        tempfile.TemporaryDirectory(prefix="corral-bench-ws-") as workspace,
        contextlib.ExitStack() as stack,
    ):
        if workspace_kind == "repo-like":
            count = make_repo_like(Path(workspace))
            notes.append(f"repo-like workspace: {count} files in 220 directories, .git/hooks, .git/config, .vscode")
        settings = Settings(home=Path(home))
        sandbox = BwrapSandbox(settings)
        spec = SandboxSpec(("true",), Path(workspace), limits=Limits(memory=256 << 20, pids=64, cpus=1.0))
        if workspace_kind == "bridged":
            spec = dataclasses.replace(spec, egress=_proxy_socket(settings, stack))
        for _ in range(budget.warmup):
            sandbox.run(spec)
        with _instrumented(timers) as missing:
            if missing:
                notes.append(f"not found (renamed?), not timed: {', '.join(missing)}")
            start_all = time.perf_counter()
            runs = 0
            while runs < min(budget.max_iterations, 100) and time.perf_counter() - start_all < budget.max_seconds / 2:
                start = time.perf_counter()
                sandbox.run(spec)
                timers.end_run(time.perf_counter() - start)
                runs += 1
    total = statistics.median(timers.samples["TOTAL"])
    rows: list[tuple[str, ...]] = [
        (f"phase ({workspace_kind} workspace, {runs} runs)", "p50 when run", "per run", "share", "runs")
    ]
    # A phase that not every run has (the kill sweep) counts by its time per run, not per occurrence.
    ordered = sorted(
        (label for label in timers.samples if label != "TOTAL"), key=lambda label: -sum(timers.samples[label])
    )
    everything = sum(timers.samples["TOTAL"])
    for label in [*ordered, "TOTAL"]:
        values = timers.samples[label]
        rows.append(
            (
                label,
                f"{percentile(values, 50) * 1000:.3f} ms",
                f"{sum(values) / runs * 1000:.3f} ms",
                f"{100 * sum(values) / everything:.0f}%",
                f"{len(values)}",
            )
        )
    notes.append(f"{workspace_kind} workspace: p50 of a whole run {total * 1000:.2f} ms")
    return rows, notes


def _proxy_socket(settings: Any, stack: contextlib.ExitStack) -> Path:
    """An egress endpoint served by a ``ProxyThread`` for as long as ``stack`` lives, as in ``bridged_spawn``."""
    from corral.egress.door import Door
    from corral.egress.policy import Policy

    door = Door(settings.runtime, Policy(allow=["example.invalid"]), name=f"bench-phases-{os.getpid()}")
    socket: Path = stack.enter_context(door).socket
    return socket


def _import_table(python: str, script: Path, env: dict[str, str], cwd: Path, repeats: int = 5) -> list[tuple[str, ...]]:
    """Self import time summed by top-level package, median over ``repeats`` CLI calls."""
    per_run: list[dict[str, int]] = []
    for _ in range(repeats):
        done = subprocess.run(
            [python, "-X", "importtime", str(script), "sandbox", "run", "--", "true"],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
        )
        totals: dict[str, int] = defaultdict(int)
        for line in done.stderr.splitlines():
            fields = line.removeprefix("import time:").split("|")
            if not line.startswith("import time:") or len(fields) != 3 or not fields[0].strip().isdigit():
                continue  # not a measurement (the header, or the command's own output)
            totals[fields[2].strip().split(".")[0]] += int(fields[0])
        per_run.append(totals)
    packages = {name for totals in per_run for name in totals}
    medians = {name: statistics.median(totals.get(name, 0) for totals in per_run) for name in packages}
    grand = sum(medians.values())
    rows: list[tuple[str, ...]] = [("top-level package (python -X importtime, self time)", "median", "share")]
    for name, value in sorted(medians.items(), key=lambda kv: -kv[1])[:15]:
        rows.append((name, f"{value / 1000:.1f} ms", f"{100 * value / grand:.0f}%"))
    rows.append(("all imports (inflated by -X importtime itself)", f"{grand / 1000:.1f} ms", "100%"))
    return rows


def run(budget: Budget) -> Result:
    result = Result(NAME, TITLE)
    if shutil.which("bwrap") is None:
        result.skipped = "bwrap is not installed (apt-get install --no-install-recommends bubblewrap)"
        return result
    kinds = ["empty", "repo-like"]
    if os.geteuid() == 0 and shutil.which("socat"):
        kinds.append("bridged")
    else:
        result.notes.append("the bridged run needs root and socat: not profiled")
    for kind in kinds:
        rows, notes = _library_table(budget, kind)
        result.tables.append((f"BwrapSandbox.run phases, {kind} workspace (exclusive time)", rows))
        result.notes.extend(notes)

    script = corral_script()
    if script is None:
        result.notes.append("corral entry point not found: CLI part skipped")
        return result
    python = script_interpreter(script)
    commands = {
        "python -c pass": [python, "-c", "pass"],
        "python -c 'import corral.cli'": [python, "-c", "import corral.cli"],
        "corral version": [str(script), "version"],
        "corral sandbox run -- true": [str(script), "sandbox", "run", "--", "true"],
    }
    with cli_environment() as env, tempfile.TemporaryDirectory(prefix="corral-bench-cwd-") as cwd:
        subprocess.run(commands["corral sandbox run -- true"], env=env, cwd=cwd, capture_output=True, check=False)
        times, how = time_commands(commands, budget, env=env, cwd=Path(cwd))
        import_rows = _import_table(python, script, env, Path(cwd))
    steps: list[tuple[str, ...]] = [("CLI step (whole process)", "p50", "step over the previous")]
    previous = 0.0
    for label, values in times.items():
        p50 = percentile(values, 50)
        steps.append((label, f"{p50 * 1000:.1f} ms", f"{(p50 - previous) * 1000:+.1f} ms" if previous else ""))
        previous = p50
    result.tables.append((f"CLI split ({how})", steps))
    result.tables.append(("CLI imports by package, `corral sandbox run -- true`", import_rows))
    return result
