"""``corral serve`` for real: a subprocess on a free 127.0.0.1 port with its own CORRAL_HOME, the real pool.

Jobs use the generic agent for speed, and one uses the real Claude Code CLI against the stand-in
Messages API. The seed's curl examples run verbatim through bash; so do Coder's metadata scripts.
Every server is ended by its PID; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gitserver import make_repo
from tests.tools import require, require_root

pytestmark = pytest.mark.sandbox

SECRET = "serve-test-secret-0123456789"
AUTH = {"X-Runner-Secret": SECRET}
REAL_KEY = "sk-ant-api03-SERVE-TEST-KEY-" + "y" * 20
SCRIPTS = Path(__file__).parents[1] / "coder_metadata"
START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """One ``corral serve`` process."""

    def __init__(self, tmp: Path, args: list[str], env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"serve-{self.port}.log"
        argv = [sys.executable, "-m", "corral", "serve", "--port", str(self.port), *args]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(argv, env=env, cwd=tmp, stdout=out, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, headers=AUTH, timeout=30)

    def wait_up(self) -> Server:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"corral serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        pytest.fail(f"corral serve did not answer within {START_TIMEOUT}s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def end(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "origin.git", files=2, commits=1)


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    require_root()
    require("bwrap")
    home = tmp_path / "user-home"
    home.mkdir()
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "CORRAL_HOME": str(tmp_path / "corral-home"),
        "CORRAL_GIT_ALLOW_LOCAL": "1",
        "CORRAL_IDLE_TIMEOUT": "60",
        "CORRAL_STARTUP_TIMEOUT": "60",
        "CORRAL_JOB_TIMEOUT": "120",
    }


@pytest.fixture
def start(tmp_path: Path, base_env: dict[str, str]) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def starting(*args: str, secret: bool = True, **env: str) -> Server:
        server = Server(
            tmp_path, list(args), {**base_env, **({"CORRAL_RUNNER_SECRET": SECRET} if secret else {}), **env}
        )
        servers.append(server)
        return server.wait_up()

    yield starting
    for server in servers:
        server.end()


def generic(server: Server, origin: Path, script: str, **body: Any) -> dict[str, Any]:
    response = server.client.post(
        "/v1/jobs",
        json={"prompt": "p", "repo": str(origin), "agent": "generic", "command": ["sh", "-c", script], **body},
    )
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def wait_for(
    server: Server, job_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = server.client.get(f"/v1/jobs/{job_id}").json()
        if done(job):
            return job  # type: ignore[no-any-return]
        time.sleep(0.1)
    pytest.fail(f"job {job_id} never got there: {job}\n{server.output()}")


def ended(job: dict[str, Any]) -> bool:
    return job["state"] in ("succeeded", "failed", "cancelled", "timed_out", "interrupted")


def events_json(server: Server, job_id: str) -> list[dict[str, Any]]:
    response = server.client.get(f"/v1/jobs/{job_id}/events", headers={"Accept": "application/json"})
    return response.json()  # type: ignore[no-any-return]


def bash(command: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], env={**os.environ, **env}, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_seed_curl_examples_run_a_claude_code_job(
    start: Callable[..., Server], origin: Path, tmp_path: Path
) -> None:
    from tests.claude import claude_bin
    from tests.standin_api import StandinAPI

    require("socat")
    require("curl")
    with StandinAPI(required_auth=("x-api-key", REAL_KEY)) as api:
        server = start(
            "--capacity",
            "2",
            CORRAL_CLAUDE_BIN=str(claude_bin()),
            CORRAL_ANTHROPIC_BASE_URL=api.url,
            ANTHROPIC_API_KEY=REAL_KEY,
        )
        port = str(server.port)
        refused = bash(
            f'curl -s -X POST http://127.0.0.1:{port}/execute -H "Content-Type: application/json" '
            f'-H "X-Runner-Secret: wrong" -d \'{{"prompt": "WRITE x.txt no", "repo_url": "{origin}", '
            '"timeout_ms": 600000}\''
        )
        assert json.loads(refused.stdout)["error"]["code"] == "unauthorized"
        assert server.client.get("/v1/jobs").json()["jobs"] == []
        executed = bash(
            f'curl -s -X POST http://127.0.0.1:{port}/execute -H "Content-Type: application/json" '
            f'-H "X-Runner-Secret: $SECRET" -d \'{{"prompt": "WRITE hello.txt hi from the seed", '
            f'"repo_url": "{origin}", "timeout_ms": 600000}}\'',
            SECRET=SECRET,
        )
        health = bash(f"curl -s http://127.0.0.1:{port}/health")
        oauth = bash(f'curl -s -H "X-Runner-Secret: $SECRET" http://127.0.0.1:{port}/oauth/status', SECRET=SECRET)
    result = json.loads(executed.stdout)
    assert result["success"] is True, (result, server.output())
    job = server.client.get(f"/v1/jobs/{result['job_id']}").json()
    assert job["state"] == result["state"] == "succeeded"
    assert job["options"]["timeout"] == 600.0
    assert result["branch"] == f"corral/{job['id']}"
    assert result["diff_summary"]["files_changed"] == ["hello.txt"] == job["result"]["files_changed"]
    assert result["diff_summary"]["insertions"] == 1
    assert result["usage"] == job["result"]["usage"]
    assert sum(result["usage"].values()) > 0
    assert result["result"] == job["result"]["summary"]
    assert (result["cost_usd"], result["duration_ms"]) == (job["result"]["cost_usd"], job["result"]["duration_ms"])
    assert json.loads(health.stdout)["status"] == "healthy"
    assert json.loads(health.stdout)["oauth"]["configured"] is True
    status = json.loads(oauth.stdout)
    assert (status["kind"], status["source"]) == ("api_key", "environment ANTHROPIC_API_KEY")
    for text in (executed.stdout, health.stdout, oauth.stdout):
        assert REAL_KEY not in text


def test_coder_metadata_scripts_read_healthz(start: Callable[..., Server]) -> None:
    require("curl")
    require("jq")
    server = start("--capacity", "3")
    healthz = server.client.get("/healthz").json()
    seen = {}
    for script in sorted(SCRIPTS.glob("*.sh")):
        done = subprocess.run(
            ["bash", str(script)],
            env={**os.environ, "PORT": str(server.port)},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, (script.name, done.stderr)
        seen[script.stem] = done.stdout.strip()
    assert seen == {
        "status": healthz["status"],
        "sessions": f"{healthz['active_sessions']} / 3",
        "runner_id": healthz["runner_id"],
        "last_poll": "ok",
    }
    assert healthz["status"] == "ok"


def test_sse_replays_from_last_event_id_then_follows_live(start: Callable[..., Server], origin: Path) -> None:
    server = start()
    job = generic(server, origin, "echo first; sleep 3; echo second")
    wait_for(server, job["id"], lambda j: any(e["data"] == "first" for e in events_json(server, j["id"])))
    before = events_json(server, job["id"])
    assert "second" not in [e["data"] for e in before]
    frames: list[tuple[int, str, str]] = []
    started = time.monotonic()
    headers = {"Last-Event-ID": "1", "Accept": "text/event-stream"}
    with server.client.stream("GET", f"/v1/jobs/{job['id']}/events", headers=headers, timeout=60) as response:
        from corral.cli.remote import parse_sse

        frames.extend(parse_sse(response.iter_lines()))
    assert time.monotonic() - started < 60
    stored = events_json(server, job["id"])
    assert [(e["seq"], e["kind"], e["data"]) for e in stored if e["seq"] > 1] == frames
    assert [seq for seq, _, _ in frames] == list(range(2, len(frames) + 2))
    assert frames[-1][1:] == ("state", "succeeded")
    assert len(stored) > len(before)  # the stream followed the job after it connected


def test_sigterm_drains_running_jobs_runs_on_exit_and_exits_0(
    start: Callable[..., Server], origin: Path, tmp_path: Path
) -> None:
    mark = tmp_path / "on exit ran"
    server = start("--drain-timeout", "30s", "--on-exit", f"touch '{mark}'")
    job = generic(server, origin, "sleep 3; echo finished")
    wait_for(server, job["id"], lambda j: j["state"] == "running")
    os.kill(server.proc.pid, signal.SIGTERM)
    healthz = wait_for_draining(server)
    assert healthz["draining"] is True
    assert server.client.get("/readyz").status_code == 503
    assert server.proc.wait(60) == 0, server.output()
    assert mark.exists()
    from corral.jobs.store import open_store
    from corral.settings import Settings

    store = open_store(Settings(home=tmp_path / "corral-home"))
    try:
        assert store.get(job["id"]).state.value == "succeeded"
    finally:
        store.close()


def wait_for_draining(server: Server) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        healthz = httpx.get(f"{server.url}/healthz", timeout=5).json()
        if healthz["draining"]:
            return healthz  # type: ignore[no-any-return]
        time.sleep(0.05)
    pytest.fail("the server never said it was draining")


def test_a_drain_past_its_timeout_interrupts_the_job_and_admin_drain_ends_the_server(
    start: Callable[..., Server], origin: Path
) -> None:
    server = start("--drain-timeout", "1s")
    job = generic(server, origin, "echo started; sleep 60")
    wait_for(server, job["id"], lambda j: j["state"] == "running")
    assert httpx.post(f"{server.url}/admin/drain", timeout=5).status_code == 401
    assert server.client.post("/admin/drain").status_code == 202
    assert server.proc.wait(60) == 0, server.output()
    server.proc.wait()
    from corral.jobs.store import open_store
    from corral.settings import Settings

    store = open_store(Settings(home=Path(server.log.parent / "corral-home")))
    try:
        assert store.get(job["id"]).state.value == "interrupted"
    finally:
        store.close()


def test_jobs_commands_talk_to_the_server_with_corral_url(
    start: Callable[..., Server], origin: Path, tmp_path: Path
) -> None:
    server = start()
    env = {"CORRAL_URL": server.url, "CORRAL_RUNNER_SECRET": SECRET, "CORRAL_HOME": str(tmp_path / "elsewhere")}

    def corral(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "corral", "jobs", *args],
            env={**os.environ, **env},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = generic(server, origin, "echo one; echo two")
    running = generic(server, origin, "echo waiting; sleep 60")
    follow = corral("logs", "--follow", done["id"])
    assert follow.returncode == 0, follow.stderr
    assert [line.split()[-1] for line in follow.stdout.splitlines()][-3:] == ["one", "two", "succeeded"]
    listed = corral("list", "--json")
    assert {job["id"] for job in json.loads(listed.stdout)} == {done["id"], running["id"]}
    shown = json.loads(corral("show", done["id"]).stdout)
    assert shown["state"] == "succeeded"
    wait_for(server, running["id"], lambda j: j["state"] == "running")
    cancelled = corral("cancel", running["id"])
    assert cancelled.returncode == 0, cancelled.stderr
    assert wait_for(server, running["id"], ended)["state"] == "cancelled"
    again = corral("cancel", running["id"])
    assert again.returncode == 9
    assert "already ended" in again.stderr
    wrong = subprocess.run(
        [sys.executable, "-m", "corral", "jobs", "list"],
        env={**os.environ, **env, "CORRAL_RUNNER_SECRET": "wrong"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 2
    assert "X-Runner-Secret" in wrong.stderr
    assert not (tmp_path / "elsewhere" / "corral.db").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--host", "0.0.0.0"], "refuses to listen on 0.0.0.0 without CORRAL_RUNNER_SECRET"),
        (["--capacity", "0"], "is not a whole number of 1 or more"),
        (["--capacity", "lots"], "is not a whole number of 1 or more"),
    ],
)
def test_serve_refuses_with_a_sentence(base_env: dict[str, str], tmp_path: Path, args: list[str], words: str) -> None:
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "corral", "serve", "--port", str(port), *args],
        env=base_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert words in done.stderr
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_without_a_secret_it_serves_loopback_and_says_so(start: Callable[..., Server]) -> None:
    server = start(secret=False)
    assert "CORRAL_RUNNER_SECRET is not set" in server.output()
    assert httpx.get(f"{server.url}/v1/jobs", timeout=5).status_code == 200
