"""The stand-in API drives the real Claude Code CLI (no sandbox) the way its docstring says, and serves the rest."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.claude import ClaudeRun, offline_env, run_claude
from tests.standin_api import StandinAPI, parse_script


def claude(api: StandinAPI, tmp_path: Path, prompt: str, **extra: str) -> ClaudeRun:
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    credential = {} if "CLAUDE_CODE_OAUTH_TOKEN" in extra else {"ANTHROPIC_API_KEY": "standin-key"}
    env = offline_env(api.url, tmp_path / "home", IS_SANDBOX="1", **credential, **extra)
    return run_claude(prompt, cwd=project, env=env)


def test_write_then_bash(tmp_path: Path) -> None:
    with StandinAPI() as api:
        done = claude(api, tmp_path, "WRITE notes/a.txt one\\ntwo\nBASH wc -l < notes/a.txt > count.txt")
    assert (done.returncode, done.result["is_error"]) == (0, False), done.result
    project = tmp_path / "project"
    assert (project / "notes" / "a.txt").read_text() == "one\ntwo"
    assert (project / "count.txt").read_text().strip() == "1"
    lines = done.result["result"].splitlines()
    assert lines[0] == "DONE"
    assert [line.split(" -> ")[1][:3] for line in lines[1:]] == ["ok:", "ok:"]
    assert Path(done.events[0]["cwd"]).resolve() == project.resolve()


def test_read_then_edit(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "f.txt").write_text("hello world\n")
    with StandinAPI() as api:
        done = claude(api, tmp_path, "READ f.txt\nEDIT f.txt hello goodbye")
    assert done.result["is_error"] is False, done.result
    assert (project / "f.txt").read_text() == "goodbye world\n"
    assert "READ f.txt -> ok: 1\thello world" in done.result["result"]


def test_error_401_gives_an_error_result(tmp_path: Path) -> None:
    with StandinAPI() as api:
        done = claude(api, tmp_path, "ERROR 401", CLAUDE_CODE_MAX_RETRIES="0")
    assert done.returncode == 1
    assert (done.result["is_error"], done.result["api_error_status"]) == (True, 401)
    assert "401" in done.result["result"]


def test_usage_limit_gives_the_usage_limit_result(tmp_path: Path) -> None:
    reset = int(time.time()) + 3 * 3600
    with StandinAPI() as api:
        done = claude(api, tmp_path, f"USAGE_LIMIT {reset}", CLAUDE_CODE_OAUTH_TOKEN="standin-token")
        posts = [r for r in api.requests if r.method == "POST"]
    assert len(posts) == 1  # not retried
    limit = next(e for e in done.events if e["type"] == "rate_limit_event")["rate_limit_info"]
    assert (limit["status"], limit["resetsAt"], limit["rateLimitType"]) == ("rejected", reset, "five_hour")
    assert done.returncode == 1
    assert (done.result["is_error"], done.result["api_error_status"]) == (True, 429)
    assert done.result["result"].startswith("You've hit your session limit \u00b7 resets ")


def post(api: StandinAPI, script: str, *, stream: bool = True, timeout: float = 5.0) -> httpx.Response:
    body = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": script}]}
    return httpx.post(f"{api.url}/v1/messages", json=body, timeout=timeout)


def test_the_stand_in_without_the_cli() -> None:
    with StandinAPI(required_auth=("x-api-key", "k")) as api:
        assert httpx.head(api.url).status_code == 200
        assert httpx.post(f"{api.url}/v1/messages", json={}).status_code == 401
    with StandinAPI() as api:
        reply = post(api, "ERROR 529")
        assert (reply.status_code, reply.json()["error"]["type"]) == (529, "overloaded_error")
        reply = post(api, "SAY plain", stream=False)
        assert (reply.json()["content"], reply.json()["usage"]) == ([{"type": "text", "text": "plain"}], api.usage_sent)
        assert post(api, "FLY away").status_code == 400
        counted = httpx.post(f"{api.url}/v1/messages/count_tokens", json={"messages": []})
        assert counted.json()["input_tokens"] > 0
    assert [turn.line for turn in parse_script("slow 0.5\nSAY a\n\nSTALL 2")] == ["SAY a", "DONE"]
    assert [(t.slow, t.stall) for t in parse_script("SLOW 0.5\nSAY a\nSTALL 2")] == [(0.5, 0.0), (0.0, 2.0)]


def test_slow_waits_and_silent_never_answers() -> None:
    with StandinAPI() as api:
        start = time.monotonic()
        assert post(api, "SLOW 0.6\nSAY late").status_code == 200
        assert time.monotonic() - start >= 0.6
        with pytest.raises(httpx.ReadTimeout):
            post(api, "SILENT", timeout=0.5)
        port = int(api.url.rsplit(":", 1)[1])
        silent = socket.create_connection(("127.0.0.1", port))
        data = json.dumps({"stream": True, "messages": [{"role": "user", "content": "SILENT"}]}).encode()
        silent.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
        stopper = threading.Timer(0.3, api.stop)
        stopper.start()
        assert silent.recv(100) == b""  # nothing was ever sent; stop() closed the connection
        stopper.join()
        silent.close()
