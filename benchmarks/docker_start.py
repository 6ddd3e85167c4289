"""The Docker backend: sandbox start to the command's first instruction, against a plain ``docker run``.

The subject is ``ContainerSandbox.run`` of the tests' image (``scripts/engine.sh image``) as a
session starts it: a slot and its uid, the workspace handed over, every limit, the seccomp
profile, the read-only root, and the egress relay joined to the container's network (the command
waits until it listens). The command's first instruction is ``date +%s%N``: the host's clock as
the container reads it, so start-to-first-instruction is that stamp minus the moment ``run`` was
called. The baseline, interleaved with it, is ``docker run --rm --network none IMAGE date +%s%N``
started with ``subprocess`` from the same process, timed the same way. A third series is the
subject without egress, to show what the relay adds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from benchmarks._stats import Budget, Result, Series, Target, fmt_ms, interleaved

NAME = "docker_start"
TITLE = "Docker backend: sandbox start to the command's first instruction vs a plain docker run"

MAX_RATIO = 1.3
MAX_ROUNDS = 25
MAX_SECONDS = 60.0
STAMP = ("date", "+%s%N")


def run(budget: Budget) -> Result:
    result = Result(NAME, TITLE)
    from tests.tools import ENGINE_HOST, ENGINE_IMAGE

    os.environ.setdefault("DOCKER_HOST", ENGINE_HOST)
    if shutil.which("docker") is None:
        result.skipped = "docker is not installed (apt-get install --no-install-recommends docker.io)"
        return result
    probe = subprocess.run(["docker", "image", "inspect", ENGINE_IMAGE], capture_output=True, check=False)
    if probe.returncode != 0:
        result.skipped = f"the engine at {os.environ['DOCKER_HOST']} has no {ENGINE_IMAGE} (make engine builds it)"
        return result

    from corral.sandbox.container import ContainerSandbox
    from corral.sandbox.spec import Limits, SandboxSpec
    from corral.settings import Settings

    limits = Limits(memory=1 << 30, pids=512, cpus=1.0)
    loop = Budget(min(budget.max_iterations, MAX_ROUNDS), min(budget.max_seconds, MAX_SECONDS), warmup=2)
    firsts: dict[str, list[float]] = {"corral": [], "bare": [], "plain": []}
    with (
        contextlib.ExitStack() as stack,
        tempfile.TemporaryDirectory(prefix="corral-bench-home-") as home,
        tempfile.TemporaryDirectory(prefix="corral-bench-ws-") as workspace,
    ):
        settings = Settings(home=Path(home))
        sandbox = ContainerSandbox(settings, image=ENGINE_IMAGE)
        egress = stack.enter_context(_door(settings.runtime))
        spec = SandboxSpec(STAMP, Path(workspace), limits=limits, egress=egress)
        plain = SandboxSpec(STAMP, Path(workspace), limits=limits)

        def corral(spec: SandboxSpec, label: str) -> Callable[[], object]:
            def call() -> None:
                t0 = time.time_ns()
                done = sandbox.run(spec)
                if not done.ok:
                    raise RuntimeError(f"the container run failed: {done}")
                firsts[label].append((int(done.stdout) - t0) / 1e9)

            return call

        def bare() -> None:
            t0 = time.time_ns()
            argv = ["docker", "run", "--rm", "--network", "none", ENGINE_IMAGE, *STAMP]
            done = subprocess.run(argv, capture_output=True, check=True)
            firsts["bare"].append((int(done.stdout) - t0) / 1e9)

        subjects = {"corral": corral(spec, "corral"), "bare": bare, "plain": corral(plain, "plain")}
        times, rounds, took = interleaved(subjects, loop)
    warm = loop.warmup
    subject = Series("corral ContainerSandbox.run with egress: start to first instruction", firsts["corral"][warm:])
    baseline = Series("docker run --rm --network none: start to first instruction", firsts["bare"][warm:])
    without = Series("corral ContainerSandbox.run without egress: start to first instruction", firsts["plain"][warm:])
    whole = Series("corral with egress, whole run (container removed)", times["corral"])
    result.series = [subject, baseline, without, whole]
    ratio = subject.p50 / baseline.p50
    result.ratios["p50 corral / docker run (first instruction)"] = ratio
    result.ratios["p50 corral without egress / docker run"] = without.p50 / baseline.p50
    result.notes.append(f"{rounds} interleaved rounds in {took:.1f} s after {warm} warm-up rounds")
    result.notes.append(f"the relay and its wait add {fmt_ms(subject.p50 - without.p50)} at p50")
    result.targets = [Target("p50 ratio start-to-first-instruction corral / docker run", ratio, MAX_RATIO, "x")]
    return result


@contextlib.contextmanager
def _door(runtime: Path) -> Iterator[Path]:
    """An egress endpoint as a session has one (its policy allows one name; nothing is dialed here)."""
    from corral.egress.door import Door
    from corral.egress.policy import Policy
    from corral.egress.thread import ProxyThread

    with (
        ProxyThread() as proxy,
        Door(runtime, Policy(["api.example.test"]), proxy=proxy, name=f"bench-docker-{os.getpid()}") as door,
    ):
        yield door.socket
