"""1,000 jobs of the generic agent running ``true``, submitted through the API of a real ``corral serve``
and drained at capacity 8: what the service adds to each job beyond its sandbox.

The server runs as users start it (a scratch ``CORRAL_HOME``, SQLite, the bwrap sandbox), with a
small local repository. Eight client threads submit the jobs over HTTP (``POST /v1/jobs``); the
benchmark then waits, bounded, until every job has ended, and reads the store. For each job the
service's part is the time from its claim (the ``preparing`` event) to its end (``finished_at``)
minus the sandbox's own run (``duration_ms`` of its result): checkout, store writes, the egress
decision, commit and diff. The baseline, measured in the same run, is ``BwrapSandbox.run`` of
``true`` alone in this process: what starting a sandbox costs when nothing else runs.
"""

from __future__ import annotations

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


def run(budget: Budget) -> Result:
    result = Result(NAME, TITLE)
    missing = [tool for tool in ("bwrap", "git") if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        result.skipped = f"needs root and {', '.join(missing) or 'bwrap, git'} (make setup)"
        return result
    import httpx
    from tests.gitserver import make_repo

    from benchmarks.service_health import ServeProcess
    from corral.jobs.store import open_store
    from corral.settings import Settings

    with tempfile.TemporaryDirectory(prefix="corral-bench-jobs-") as scratch:
        root = Path(scratch)
        origin = make_repo(root / "origin.git", files=20, commits=2)
        home = root / "home"
        sandbox = _sandbox_baseline(root / "baseline", min(SANDBOX_ROUNDS, budget.max_iterations))
        with ServeProcess.corral(home, root / "serve.log", CORRAL_CAPACITY=str(CAPACITY)) as server:
            body = {"prompt": "p", "repo": str(origin), "agent": "generic", "command": ["true"]}
            submitted: list[str] = []
            failures: list[str] = []
            lock = threading.Lock()

            def submit(count: int) -> None:
                with httpx.Client(base_url=server.url, timeout=30) as client:
                    for _ in range(count):
                        response = client.post("/v1/jobs", json=body)
                        with lock:
                            if response.status_code == 202:
                                submitted.append(response.json()["id"])
                            else:
                                failures.append(f"{response.status_code} {response.text[:200]}")

            started = time.perf_counter()
            shares = [JOBS // SUBMITTERS + (1 if n < JOBS % SUBMITTERS else 0) for n in range(SUBMITTERS)]
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
                figures = _per_job(store, jobs)
            finally:
                store.close()
    ended = {state: sum(1 for j in jobs if j.state.value == state) for state in {j.state.value for j in jobs}}
    result.notes.append(
        f"{len(submitted)} of {JOBS} submitted in {submit_seconds:.1f} s by {SUBMITTERS} HTTP clients "
        f"({len(failures)} refused{': ' + failures[0] if failures else ''}); all ended after {drain_seconds:.1f} s "
        f"({len(jobs) / drain_seconds:.1f} jobs/s at capacity {CAPACITY}, {os.cpu_count()} CPUs); end states: {ended}"
    )
    for label, times in figures.items():
        result.series.append(Series(label, times))
    result.series.append(Series("BwrapSandbox.run of `true` alone (baseline)", sandbox))
    overhead = percentile(figures["service overhead (claim to end minus sandbox run)"], 50)
    result.ratios["job (claim to end) / sandbox alone"] = percentile(figures["job, claim to end"], 50) / percentile(
        sandbox, 50
    )
    result.targets.append(Target("service overhead p50", overhead * 1000, MAX_OVERHEAD * 1000, " ms"))
    result.targets.append(Target("jobs not succeeded", float(len(submitted) - ended.get("succeeded", 0)), 0))
    result.notes.append(
        f"service overhead per job p50 {fmt_ms(overhead)}; the sandbox alone {fmt_ms(percentile(sandbox, 50))} "
        "(with 8 jobs at once on this many CPUs every phase also waits for a CPU)"
    )
    return result


def _drained(store: Any, ids: list[str], deadline: float) -> list[Any]:
    from corral.jobs.models import ENDED

    while True:
        jobs = store.list(limit=len(ids) + 10)
        if all(job.state in ENDED for job in jobs) and len(jobs) >= len(ids):
            return [job for job in jobs if job.id in set(ids)]
        if time.perf_counter() > deadline:
            msg = f"{sum(job.state not in ENDED for job in jobs)} jobs had not ended after {MAX_DRAIN:g} s"
            raise RuntimeError(msg)
        time.sleep(0.5)


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
