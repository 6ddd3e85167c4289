"""Spawn-to-exit of ``true`` in the full corral sandbox, from a long-lived Python process.

The subject is ``BwrapSandbox(settings).run(spec)`` in a loop: namespaces, seccomp, cgroup limits
on memory, pids and cpu, and (as root) the unprivileged host uid, with everything a run does
around bwrap (slot lock, cgroup create and remove, workspace ownership, protected-path scans).
The baseline, interleaved with it in the same loop, is bare bwrap started with
``subprocess.run`` from the same process.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks import BARE_BWRAP
from benchmarks._stats import Budget, Result, Series, Target, fmt_ms, interleaved

NAME = "sandbox_spawn"
TITLE = "spawn-to-exit of `true` in the full corral sandbox, from a long-lived Python process"

MAX_RATIO = 2.0
MAX_P50_MS = 10.0


def run(budget: Budget) -> Result:
    result = Result(NAME, TITLE)
    if shutil.which("bwrap") is None:
        result.skipped = "bwrap is not installed (apt-get install --no-install-recommends bubblewrap)"
        return result

    from corral.sandbox.bwrap import BwrapSandbox
    from corral.sandbox.spec import Limits, SandboxSpec
    from corral.settings import Settings

    with (
        tempfile.TemporaryDirectory(prefix="corral-bench-home-") as home,
        tempfile.TemporaryDirectory(prefix="corral-bench-ws-") as workspace,
    ):
        # The runtime directory (slot locks) stays the default on purpose: slots name host-wide
        # cgroups and uids, so a private runtime dir could collide with sandboxes running beside us.
        sandbox = BwrapSandbox(Settings(home=Path(home)))
        spec = SandboxSpec(("true",), Path(workspace), limits=Limits(memory=256 << 20, pids=64, cpus=1.0))

        start = time.perf_counter()
        first = sandbox.run(spec)  # compiles the seccomp filter and caches it under the home
        cold = time.perf_counter() - start
        if not first.ok:
            result.error = (
                f"the sandbox run failed ({first.reason}, exit {first.exit_code}): "
                f"{first.stderr.decode(errors='replace').strip()[-600:]}"
            )
            return result
        result.notes.append(f"first run (compiles and caches the seccomp filter): {fmt_ms(cold)}")
        if first.limits_enforced:
            result.notes.append("cgroup limits enforced (memory 256 MiB, 64 pids, 1 cpu)")
        else:
            result.notes.append(f"WARNING: limits NOT enforced, so this is not the full sandbox: {first.limits_note}")

        failures: list[str] = []

        def corral_run() -> None:
            outcome = sandbox.run(spec)
            if not outcome.ok:
                failures.append(f"{outcome.reason} {outcome.exit_code}")

        def bare_bwrap() -> None:
            subprocess.run(BARE_BWRAP, check=False)

        times, rounds, seconds = interleaved({"corral": corral_run, "bare": bare_bwrap}, budget)

    corral = Series("corral BwrapSandbox.run (full sandbox)", times["corral"])
    bare = Series("bare bwrap via subprocess.run", times["bare"])
    result.series = [corral, bare]
    result.notes.append(f"{rounds} interleaved rounds in {seconds:.1f} s after {budget.warmup} warm-up rounds")
    if failures:
        result.notes.append(f"WARNING: {len(failures)} corral runs did not exit 0 (first: {failures[0]})")
    ratio = corral.p50 / bare.p50
    result.ratios["p50 corral / bare bwrap"] = ratio
    result.ratios["p90 corral / bare bwrap"] = corral.p90 / bare.p90
    result.notes.append(f"corral's own cost over bare bwrap at p50: {fmt_ms(corral.p50 - bare.p50)}")
    result.targets = [
        Target("p50 ratio corral / bare bwrap", ratio, MAX_RATIO, "x"),
        Target("p50 corral", corral.p50 * 1000, MAX_P50_MS, " ms"),
    ]
    return result
