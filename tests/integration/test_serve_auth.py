"""API tokens for real: ``corral tokens`` (the CLI) makes and revokes them, a ``corral serve`` subprocess checks them.

Servers listen on 127.0.0.1 only. The "accepts 0.0.0.0 with a token" case never listens on
0.0.0.0: the port is already held on 127.0.0.1 by the test, so once corral serve has accepted
the address it fails to bind it, and says so, which proves the auth check let it through.
Every server is ended by its PID; every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

START_TIMEOUT = 20.0
REPO = "https://example.invalid/r.git"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "user-home"
    home.mkdir()
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "CORRAL_HOME": str(tmp_path / "corral-home"),
    }


def corral(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def create_token(env: dict[str, str], *scopes: str) -> tuple[str, str]:
    """A token made by ``corral tokens create``: its value (stdout) and its id (from ``corral tokens list``)."""
    made = corral(env, "tokens", "create", *[arg for scope in scopes for arg in ("--scope", scope)])
    assert made.returncode == 0, made.stderr
    value = made.stdout.strip()
    listed = corral(env, "tokens", "list")
    token_id = next(line.split()[0] for line in listed.stdout.splitlines() if ",".join(scopes) in line)
    assert token_id in made.stderr
    return value, token_id


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


Start = Callable[[], tuple[str, "subprocess.Popen[bytes]", Path]]


@pytest.fixture
def server(tmp_path: Path, env: dict[str, str]) -> Iterator[Start]:
    """Starts ``corral serve`` on 127.0.0.1 when called; the fixture ends it by its PID."""
    port = free_port()
    log = tmp_path / "serve.log"
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> tuple[str, subprocess.Popen[bytes], Path]:
        argv = [sys.executable, "-m", "corral", "serve", "--host", "127.0.0.1", "--port", str(port)]
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"corral serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return url, proc, log
            except httpx.TransportError:
                time.sleep(0.1)
        pytest.fail(f"corral serve did not answer within {START_TIMEOUT}s:\n{log.read_text()}")

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)


def test_tokens_from_the_cli_are_checked_by_a_real_server(server: Start, env: dict[str, str]) -> None:
    writer, _ = create_token(env, "jobs:write")
    reader, reader_id = create_token(env, "jobs:read")
    url, _, log = server()
    auth = {"writer": {"Authorization": f"Bearer {writer}"}, "reader": {"Authorization": f"Bearer {reader}"}}
    with httpx.Client(base_url=url, timeout=30) as client:
        anonymous = client.post("/v1/jobs", json={"prompt": "p", "repo": REPO})
        submitted = client.post("/v1/jobs", json={"prompt": "p", "repo": REPO}, headers=auth["writer"])
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        read = client.get(f"/v1/jobs/{job_id}", headers=auth["reader"])
        reader_submits = client.post("/v1/jobs", json={"prompt": "p", "repo": REPO}, headers=auth["reader"])
        writer_reads = client.get("/v1/jobs", headers=auth["writer"])
        metrics = client.get("/metrics", headers=auth["reader"])
        revoked = corral(env, "tokens", "revoke", reader_id)
        after = client.get(f"/v1/jobs/{job_id}", headers=auth["reader"])
    assert anonymous.status_code == 401
    assert (read.status_code, read.json()["id"]) == (200, job_id)
    assert reader_submits.status_code == 403
    assert "needs jobs:write" in reader_submits.json()["error"]["message"]
    assert writer_reads.status_code == 403
    assert metrics.status_code == 200
    assert "corral_jobs_started_total" in metrics.text
    assert revoked.returncode == 0, revoked.stderr
    assert after.status_code == 401
    assert f"{reader_id} was revoked" in after.json()["error"]["message"]
    listed = corral(env, "tokens", "list", "--json")
    assert writer not in listed.stdout
    assert reader not in listed.stdout
    assert "without auth" not in log.read_text()


def test_a_non_loopback_address_needs_a_secret_or_a_token(env: dict[str, str]) -> None:
    with socket.socket() as held:  # the port is taken on 127.0.0.1, so 0.0.0.0 can never be bound
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        refused = corral(env, "serve", "--host", "0.0.0.0", "--port", port)
        create_token(env, "jobs:read")
        accepted = corral(env, "serve", "--host", "0.0.0.0", "--port", port)
    assert refused.returncode == 2
    assert "refuses to listen on 0.0.0.0 without CORRAL_RUNNER_SECRET or an API token" in refused.stderr
    assert accepted.returncode == 2
    assert "refuses" not in accepted.stderr
    assert f"cannot listen on 0.0.0.0:{port}" in accepted.stderr


def test_loopback_without_auth_says_so(env: dict[str, str], server: Start) -> None:
    url, _, log = server()
    with httpx.Client(base_url=url, timeout=30) as client:
        listed = client.get("/v1/jobs")
    assert listed.status_code == 200
    assert "CORRAL_RUNNER_SECRET is not set and there is no API token: listening on 127.0.0.1" in log.read_text()
