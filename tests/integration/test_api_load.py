"""100 concurrent submissions over HTTP to a real ``corral serve`` at capacity 4: none lost, all succeeded.

The server is a subprocess on a free 127.0.0.1 port with its own ``CORRAL_HOME``; the jobs use the
generic agent (``sh -c 'echo $0'`` with the job's number), so each result proves which job ran.
Submissions, the drain and the server's end are all bounded in time.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gitserver import make_repo
from tests.integration.test_serve import AUTH, SECRET, Server
from tests.tools import require, require_root

pytestmark = pytest.mark.sandbox

JOBS = 100
CAPACITY = 4
DRAIN_TIMEOUT = 240.0
ENDED = ("succeeded", "failed", "cancelled", "timed_out", "interrupted")


def test_100_concurrent_submissions_at_capacity_4_all_finish_and_none_is_lost(tmp_path: Path) -> None:
    require_root()
    require("bwrap")
    origin = make_repo(tmp_path / "origin.git", files=2, commits=1)
    home = tmp_path / "user-home"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "CORRAL_HOME": str(tmp_path / "corral-home"),
        "CORRAL_GIT_ALLOW_LOCAL": "1",
        "CORRAL_RUNNER_SECRET": SECRET,
        "CORRAL_CAPACITY": str(CAPACITY),
    }
    server = Server(tmp_path, [], env).wait_up()
    try:
        answers: dict[int, httpx.Response | BaseException] = {}
        gate = threading.Barrier(JOBS)

        def submit(n: int) -> None:
            body = {"prompt": f"job-{n}", "repo": str(origin), "agent": "generic", "command": ["echo", "{prompt}"]}
            with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
                gate.wait(30)
                try:
                    answers[n] = client.post("/v1/jobs", json=body)
                except httpx.HTTPError as err:
                    answers[n] = err

        threads = [threading.Thread(target=submit, args=(n,)) for n in range(JOBS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        assert all(not t.is_alive() for t in threads), "a submission hung"
        refused = {n: a for n, a in answers.items() if not isinstance(a, httpx.Response) or a.status_code != 202}
        assert not refused, refused
        ids = {n: a.json()["id"] for n, a in answers.items() if isinstance(a, httpx.Response)}
        assert len(set(ids.values())) == JOBS

        peak = 0
        deadline = time.monotonic() + DRAIN_TIMEOUT
        jobs: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            peak = max(peak, server.client.get("/healthz").json()["active_sessions"])
            listed = server.client.get("/v1/jobs", params={"limit": 500}).json()["jobs"]
            jobs = {job["id"]: job for job in listed}
            if len(jobs) >= JOBS and all(job["state"] in ENDED for job in jobs.values()):
                break
            time.sleep(0.2)
        assert set(jobs) == set(ids.values()), "a job was lost or one appeared that nobody submitted"
        states = {job["state"] for job in jobs.values()}
        assert states == {"succeeded"}, (states, server.output()[-3000:])
        assert 1 <= peak <= CAPACITY
        for n, job_id in ids.items():
            events = server.client.get(f"/v1/jobs/{job_id}/events", headers={"Accept": "application/json"}).json()
            assert [e["data"] for e in events if e["kind"] == "agent"] == [f"job-{n}"]
    finally:
        server.end()
