"""Spawn-to-exit of ``true`` in a sandbox with the network bridge, from a long-lived Python process.

The subject is the full sandbox of ``sandbox_spawn`` plus egress: a proxy endpoint with its own
Unix socket (served by a ``ProxyThread`` that stays up, as in the runner), the relay started in
the sandbox's network namespace, and the command held until the relay listens. Baselines in the
same run, interleaved: the same sandbox without network, and bare bwrap.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from benchmarks import BARE_BWRAP
from benchmarks._stats import Budget, Result, Series, Target, fmt_ms, interleaved

NAME = "bridged_spawn"
TITLE = "spawn-to-exit of `true` in a sandbox with the network bridge, from a long-lived Python process"

MAX_P50_MS = 15.0


def run(budget: Budget) -> Result:
    result = Result(NAME, TITLE)
    for tool in ("bwrap", "socat"):
        if shutil.which(tool) is None:
            result.skipped = f"{tool} is not installed"
            return result
    if os.geteuid() != 0:
        result.skipped = "the network bridge needs root"
        return result

    from corral.egress.door import Door
    from corral.egress.policy import Policy
    from corral.sandbox.bwrap import BwrapSandbox
    from corral.sandbox.spec import Limits, SandboxSpec
    from corral.settings import Settings

    with (
        tempfile.TemporaryDirectory(prefix="corral-bench-home-") as home,
        tempfile.TemporaryDirectory(prefix="corral-bench-ws-") as workspace,
    ):
        settings = Settings(home=Path(home))
        sandbox = BwrapSandbox(settings)
        policy = Policy(allow=["example.invalid"])
        with Door(settings.runtime, policy, name=f"bench-{os.getpid()}") as door:
            limits = Limits(memory=256 << 20, pids=64, cpus=1.0)
            bridged = SandboxSpec(("true",), Path(workspace), limits=limits, egress=door.socket)
            plain = SandboxSpec(("true",), Path(workspace), limits=limits)
            first = sandbox.run(bridged)
            if not first.ok:
                result.error = f"the bridged run failed: {first.stderr.decode(errors='replace').strip()[-600:]}"
                return result
            failures: list[str] = []

            def check(outcome_ok: bool, what: str) -> None:
                if not outcome_ok:
                    failures.append(what)

            times, rounds, seconds = interleaved(
                {
                    "bridged": lambda: check(sandbox.run(bridged).ok, "bridged"),
                    "plain": lambda: check(sandbox.run(plain).ok, "plain"),
                    "bare": lambda: subprocess.run(BARE_BWRAP, check=False) and None,
                },
                budget,
            )

    subject = Series("corral run with the network bridge", times["bridged"])
    plain_series = Series("corral run without network", times["plain"])
    bare = Series("bare bwrap via subprocess.run", times["bare"])
    result.series = [subject, plain_series, bare]
    result.notes.append(f"{rounds} interleaved rounds in {seconds:.1f} s after {budget.warmup} warm-up rounds")
    result.notes.append(f"the bridge's own cost at p50: {fmt_ms(subject.p50 - plain_series.p50)}")
    if failures:
        result.notes.append(f"WARNING: {len(failures)} runs did not exit 0 (first: {failures[0]})")
    result.ratios["p50 bridged / without network"] = subject.p50 / plain_series.p50
    result.ratios["p50 bridged / bare bwrap"] = subject.p50 / bare.p50
    result.targets = [Target("p50 bridged", subject.p50 * 1000, MAX_P50_MS, " ms")]
    return result
