"""What corral adds to a short session of the real Claude Code CLI: a whole job versus the bare CLI.

The subject is one job from ``JobRunner.submit`` to its stored result: a checkout of a small
repository from a warm mirror, the gateway and the egress door, the sandbox with its relay, the
CLI writing one file through the stand-in Messages API (``tests/standin_api.py`` on 127.0.0.1,
behind the gateway), every line logged to the store, the commit and the diff. The baseline,
interleaved with it, is the same CLI on the same prompt run directly on the host in a fresh
directory, against the same stand-in, with the same offline environment. The difference of the
p50s is corral's overhead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from benchmarks._stats import Budget, Result, Series, Target, fmt_ms, interleaved

NAME = "job_overhead"
TITLE = "a whole job (checkout, gateway, sandbox, log, commit) vs the bare Claude Code CLI on the same prompt"

PROMPT = "WRITE hello.txt hello from the benchmark"
KEY = "sk-ant-api03-benchmark-key"
MAX_ROUNDS = 15
MAX_SECONDS = 90.0
MAX_OVERHEAD = 0.300


def run(budget: Budget) -> Result:
    result = Result(NAME, TITLE)
    from corral.runner.job import find_claude
    from corral.settings import Settings

    missing = [tool for tool in ("bwrap", "socat", "git") if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        result.skipped = f"needs root and {', '.join(missing) or 'bwrap, socat, git'} (make setup)"
        return result
    try:
        claude = find_claude(Settings())
    except Exception as err:  # reported, not raised: the other benchmarks still run
        result.skipped = str(err)
        return result

    from tests.claude import offline_env
    from tests.gitserver import make_repo
    from tests.standin_api import StandinAPI

    from corral.jobs.store import open_store
    from corral.runner.job import JobRunner

    with tempfile.TemporaryDirectory(prefix="corral-bench-job-") as scratch, StandinAPI() as api:
        root = Path(scratch)
        origin = make_repo(root / "origin.git", files=50, commits=2)
        settings = Settings(
            home=root / "home", git_allow_local=True, anthropic_base_url=api.url, claude_bin=str(claude)
        )
        store = open_store(settings)
        runner = JobRunner(settings, store, environ={"ANTHROPIC_API_KEY": KEY})
        failures: list[str] = []

        def job() -> None:
            ended = runner.run(runner.submit(PROMPT, str(origin)).id)
            if ended.state.value != "succeeded":
                failures.append(f"job {ended.id} {ended.state.value}: {ended.result}")

        counter = iter(range(1_000_000))

        def bare() -> None:
            work = root / f"bare-{next(counter)}"
            (work / "project").mkdir(parents=True)
            env = offline_env(api.url, work, ANTHROPIC_API_KEY=KEY, IS_SANDBOX="1")  # as root on the host
            argv = [str(claude), "-p", PROMPT, "--output-format", "stream-json", "--verbose"]
            argv += ["--permission-mode", "bypassPermissions"]
            done = subprocess.run(
                argv, cwd=work / "project", env=env, stdin=subprocess.DEVNULL, capture_output=True, check=False
            )
            if done.returncode != 0 or not (work / "project" / "hello.txt").exists():
                failures.append(f"bare CLI exit {done.returncode}: {done.stderr[-300:]!r}")

        loop = Budget(
            max_iterations=min(budget.max_iterations, MAX_ROUNDS),
            max_seconds=min(budget.max_seconds, MAX_SECONDS),
            warmup=1,
        )
        times, rounds, took = interleaved({"job": job, "bare": bare}, loop)
        store.close()
    if failures:
        result.error = f"{len(failures)} run(s) failed, first: {failures[0]}"
        return result
    subject = Series("corral job (submit to stored result)", times["job"])
    baseline = Series("the same CLI on the host, directly", times["bare"])
    result.series = [subject, baseline]
    overhead = subject.p50 - baseline.p50
    result.ratios["p50 job / bare CLI"] = subject.p50 / baseline.p50
    result.notes.append(f"{rounds} interleaved rounds in {took:.1f} s after 1 warm-up round (which made the mirror)")
    result.notes.append(f"added at p50: {fmt_ms(overhead)}; at p90: {fmt_ms(subject.p90 - baseline.p90)}")
    result.targets = [Target("p50 added by corral", overhead * 1000, MAX_OVERHEAD * 1000, "ms")]
    return result
