"""1,000 jobs of the generic agent running ``true``, submitted through the API of a real ``corral serve``
and drained at capacity 8: what the service adds to each job beyond its sandbox.

The server runs as users start it (a scratch ``CORRAL_HOME``, SQLite, the bwrap sandbox), with a
small local repository. Eight client threads submit the jobs over HTTP (``POST /v1/jobs``); the
benchmark then waits, bounded, until every job has ended, and reads the store. For each job the
service's part is the time from its claim (the ``preparing`` event) to its end (``finished_at``)
minus the sandbox's own run (``duration_ms`` of its result: the whole ``BwrapSandbox.run`` call,
its setup and cleanup included, as ``sandbox_spawn`` measures it): checkout, store writes, the
egress decision, commit and diff. The baseline, measured in the same run, is ``BwrapSandbox.run`` of
``true`` alone in this process: what starting a sandbox costs when nothing else runs.

Two more figures explain the result and are labelled as such: the CPU time the server process
and its children (git, bwrap, the sandboxes) spent per job, and the same run of fewer jobs at
capacity 1, where no job waits for a CPU another job uses.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._stats import Budget, Result, Series, Target, fmt_ms, percentile

NAME = "service_jobs"
TITLE = "1,000 generic `true` jobs through the API, drained at capacity 8: service overhead per job"

JOBS = 1000
CAPACITY = 8
SUBMITTERS = 8
MAX_DRAIN = 600.0
SANDBOX_ROUNDS = 50
MAX_OVERHEAD = 0.030
ALONE_JOBS = 100
"""Jobs of the extra run at capacity 1 (explanatory, no target)."""
OVERHEAD = "service overhead (claim to end minus sandbox run)"


@dataclasses.dataclass
class Drained:
    """One run: what was submitted and refused, how long it took, the ended jobs and the server's CPU time."""

    submitted: list[str]
    failures: list[str]
    submit_seconds: float
    drain_seconds: float
    jobs: list[Any]
    figures: dict[str, list[float]]
    cpu_seconds: float


def run(budget: Budget) -> Result:
    result = Result(NAME, TITLE)
    missing = [tool for tool in ("bwrap", "git") if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        result.skipped = f"needs root and {', '.join(missing) or 'bwrap, git'} (make setup)"
        return result
    from tests.gitserver import make_repo

    with tempfile.TemporaryDirectory(prefix="corral-bench-jobs-") as scratch:
        root = Path(scratch)
        origin = make_repo(root / "origin.git", files=20, commits=2)
        sandbox = _sandbox_baseline(root / "baseline", min(SANDBOX_ROUNDS, budget.max_iterations))
        main = _through_api(root / "main", origin, JOBS, CAPACITY)
        alone = _through_api(root / "alone", origin, ALONE_JOBS, 1)
    jobs, figures = main.jobs, main.figures
    ended = {state: sum(1 for j in jobs if j.state.value == state) for state in {j.state.value for j in jobs}}
    result.notes.append(
        f"{len(main.submitted)} of {JOBS} submitted in {main.submit_seconds:.1f} s by {SUBMITTERS} HTTP clients "
        f"({len(main.failures)} refused{': ' + main.failures[0] if main.failures else ''}); all ended after "
        f"{main.drain_seconds:.1f} s ({len(jobs) / main.drain_seconds:.1f} jobs/s at capacity {CAPACITY}, "
        f"{os.cpu_count()} CPUs); end states: {ended}"
    )
    for label, times in figures.items():
        result.series.append(Series(label, times))
    result.series.append(Series("BwrapSandbox.run of `true` alone (baseline)", sandbox))
    result.series.append(Series(f"(explanatory) at capacity 1, {ALONE_JOBS} jobs: {OVERHEAD}", alone.figures[OVERHEAD]))
    overhead = percentile(figures[OVERHEAD], 50)
    result.ratios["job (claim to end) / sandbox alone"] = percentile(figures["job, claim to end"], 50) / percentile(
        sandbox, 50
    )
    result.targets.append(Target("service overhead p50", overhead * 1000, MAX_OVERHEAD * 1000, " ms"))
    result.targets.append(Target("jobs not succeeded", float(len(main.submitted) - ended.get("succeeded", 0)), 0))
    result.notes.append(
        f"service overhead per job p50 {fmt_ms(overhead)}; the sandbox alone {fmt_ms(percentile(sandbox, 50))} "
        "(with 8 jobs at once on this many CPUs every phase also waits for a CPU)"
    )
    result.notes.append(
        f"(explanatory) CPU time of the server process and its children per job: {fmt_ms(_per(main))} at capacity "
        f"{CAPACITY}, {fmt_ms(_per(alone))} at capacity 1; at capacity 1 ({ALONE_JOBS} jobs, "
        f"{len(alone.jobs) / alone.drain_seconds:.1f} jobs/s) the service overhead p50 is "
        f"{fmt_ms(percentile(alone.figures[OVERHEAD], 50))}"
    )
    return result


def _per(run: Drained) -> float:
    return run.cpu_seconds / max(len(run.jobs), 1)


def _through_api(root: Path, origin: Path, count: int, capacity: int) -> Drained:
    """``count`` jobs submitted to a fresh ``corral serve`` at ``capacity`` by ``SUBMITTERS`` clients, drained."""
    import httpx

    from benchmarks.service_health import ServeProcess
    from corral.jobs.store import open_store
    from corral.settings import Settings

    root.mkdir()
    home = root / "home"
    with ServeProcess.corral(home, root / "serve.log", CORRAL_CAPACITY=str(capacity)) as server:
        body = {"prompt": "p", "repo": str(origin), "agent": "generic", "command": ["true"]}
        submitted: list[str] = []
        failures: list[str] = []
        lock = threading.Lock()

        def submit(share: int) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                for _ in range(share):
                    response = client.post("/v1/jobs", json=body)
                    with lock:
                        if response.status_code == 202:
                            submitted.append(response.json()["id"])
                        else:
                            failures.append(f"{response.status_code} {response.text[:200]}")

        cpu = _cpu_seconds(server.proc.pid)
        started = time.perf_counter()
        shares = [count // SUBMITTERS + (1 if n < count % SUBMITTERS else 0) for n in range(SUBMITTERS)]
        threads = [threading.Thread(target=submit, args=(share,)) for share in shares]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        submit_seconds = time.perf_counter() - started
        store = open_store(Settings(home=home))
        try:
            jobs = _drained(store, submitted, started + MAX_DRAIN + submit_seconds)
            drain_seconds = time.perf_counter() - started
            cpu = _cpu_seconds(server.proc.pid) - cpu
            figures = _per_job(store, jobs)
        finally:
            store.close()
    return Drained(submitted, failures, submit_seconds, drain_seconds, jobs, figures, cpu)


def _cpu_seconds(pid: int) -> float:
    """User and system time of process ``pid`` and of the children it has waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _drained(store: Any, ids: list[str], deadline: float) -> list[Any]:
    """The jobs ``ids`` once every job has ended. The look every 0.5 s asks only whether any job is
    still queued or running (three indexed queries), so that it takes no CPU from the server."""
    from corral.jobs.models import JobState

    unfinished = (JobState.QUEUED, JobState.PREPARING, JobState.RUNNING)
    while any(store.list(state=state, limit=1) for state in unfinished):
        if time.perf_counter() > deadline:
            left = sum(len(store.list(state=state, limit=len(ids) + 10)) for state in unfinished)
            msg = f"{left} jobs had not ended after {MAX_DRAIN:g} s"
            raise RuntimeError(msg)
        time.sleep(0.5)
    wanted = set(ids)
    return [job for job in store.list(limit=len(ids) + 10) if job.id in wanted]


def _per_job(store: Any, jobs: list[Any]) -> dict[str, list[float]]:
    """Phase times of each succeeded job from its event log: claim, checkout note, running, end."""
    figures: dict[str, list[float]] = {
        "job, claim to end": [],
        "service overhead (claim to end minus sandbox run)": [],
        "sandbox run (duration_ms)": [],
        "claim to checkout note": [],
        "checkout note to running": [],
        "running to end (sandbox, commit, diff, result)": [],
    }
    for job in jobs:
        if job.state.value != "succeeded" or job.result is None or job.finished_at is None:
            continue
        first: dict[str, Any] = {}
        for event in store.events(job.id):
            first.setdefault(event.data if event.kind == "state" else event.kind, event.at)
        claim, running = first["preparing"], first["running"]
        note = first.get("note", claim)
        total = (job.finished_at - claim).total_seconds()
        sandbox = job.result.duration_ms / 1000
        figures["job, claim to end"].append(total)
        figures["service overhead (claim to end minus sandbox run)"].append(total - sandbox)
        figures["sandbox run (duration_ms)"].append(sandbox)
        figures["claim to checkout note"].append((note - claim).total_seconds())
        figures["checkout note to running"].append((running - note).total_seconds())
        figures["running to end (sandbox, commit, diff, result)"].append((job.finished_at - running).total_seconds())
    return figures


def _sandbox_baseline(root: Path, rounds: int) -> list[float]:
    """Wall times of ``BwrapSandbox.run`` of ``true`` in a fresh workspace, one after the other."""
    from corral.sandbox.bwrap import BwrapSandbox
    from corral.sandbox.spec import SandboxSpec
    from corral.settings import Settings

    sandbox = BwrapSandbox(Settings(home=root / "home"))
    times = []
    for n in range(rounds + 3):
        workspace = root / f"w{n}"
        workspace.mkdir(parents=True, mode=0o700)
        spec = SandboxSpec(command=("true",), workspace=workspace)
        t0 = time.perf_counter()
        sandbox.run(spec)
        if n >= 3:  # three warm-up runs (the first compiles the seccomp filter)
            times.append(time.perf_counter() - t0)
    return times
