"""corral against Anthropic's sandbox runtime (``srt``, npm ``@anthropic-ai/sandbox-runtime``).

All as whole processes, timed by the same hyperfine call:

- ``true``: ``srt --settings F -c true`` (no domains allowed, the workspace writable) and
  ``corral sandbox run -- true``, with ``node -e 0`` as srt's floor.
- The same networked work, one proxied HTTP GET of a small file from a loopback origin this
  benchmark serves on ``127.0.0.1:PORT`` (a thread of this process): ``srt --settings F -c 'curl
  -sS --noproxy "" -o /dev/null http://127.0.0.1:PORT/f'`` with F allowing exactly
  ``127.0.0.1:PORT`` (srt's ``NO_PROXY`` names loopback, so without ``--noproxy ""`` curl would
  try to connect directly and fail), and ``corral sandbox run --allow-domain 127.0.0.1:PORT --
  curl -sS -o /dev/null http://127.0.0.1:PORT/f``; the same curl on the host, unsandboxed and
  without a proxy, is the floor.

Before timing, each command runs once and must exit 0; each sandboxed curl must also print
status 200 and reach the origin, and must fail when told to bypass the proxy (which proves the
proxy is its only way out). Runs only where srt is installed, on PATH or in
``tools/node_modules/.bin`` of the repository.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from benchmarks import REPO
from benchmarks._stats import Budget, Result, Series, check_command, check_commands, fmt_ms, time_commands
from benchmarks.cli_start import cli_environment, corral_script

NAME = "srt"
TITLE = "corral vs Anthropic's srt: `true`, and one proxied HTTP GET; whole processes"

INSTALL = "install it with `make srt` (the pinned version, into the git-ignored tools/, with ripgrep)"

BODY = b"corral benchmark\n" * 64  # 1088 bytes
"""What ``GET /f`` answers: a small file."""

CORRAL_TRUE = "corral sandbox run -- true"
SRT_TRUE = "srt -c true"
NODE = "node -e 0"
CORRAL_GET = "corral sandbox run --allow-domain: proxied GET"
SRT_GET = "srt (127.0.0.1:PORT allowed): proxied GET"
CURL = "curl on the host, direct (floor of the GET)"


def find_srt() -> str | None:
    local = REPO / "tools" / "node_modules" / ".bin" / "srt"
    if local.is_file():
        return str(local)
    return shutil.which("srt")


def srt_version(srt: str) -> str:
    package = Path(srt).resolve().parent.parent / "package.json"
    try:
        return str(json.loads(package.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "unknown version"


class _Origin(http.server.ThreadingHTTPServer):
    daemon_threads = True
    hits: int = 0


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Origin

    def do_GET(self) -> None:
        if self.path != "/f":
            self.send_error(404)
            return
        self.server.hits += 1
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def origin() -> Iterator[_Origin]:
    """An HTTP server on 127.0.0.1 (a free port) in a thread of this process: ``GET /f`` answers ``BODY``."""
    server = _Origin(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, name="bench-origin", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _settings(path: Path, workspace: Path, allowed: Sequence[str]) -> Path:
    path.write_text(
        json.dumps(
            {
                "network": {"allowedDomains": list(allowed), "deniedDomains": []},
                "filesystem": {"denyRead": [], "allowWrite": [str(workspace)], "denyWrite": []},
            }
        )
    )
    return path


def _run(command: Sequence[str], env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=120)


def _check_get(
    server: _Origin,
    label: str,
    command: Sequence[str],
    probe: Sequence[str],
    bypass: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
) -> str | None:
    """``None`` if ``command`` exits 0, ``probe`` (it printing the status) prints 200 after reaching the origin,
    and ``bypass`` (it without the proxy) fails without reaching it; else what went wrong."""
    problem = check_command(command, env=env, cwd=cwd)
    if problem is not None:
        return problem
    before = server.hits
    done = _run(probe, env, cwd)
    if done.returncode != 0 or done.stdout.strip() != "200" or server.hits != before + 1:
        return (
            f"{label}: expected status 200 from the origin through the proxy, got exit {done.returncode}, "
            f"status {done.stdout.strip()!r}, {server.hits - before} request(s) at the origin; "
            f"{done.stderr.strip()[-400:]} ({shlex.join(probe)})"
        )
    done = _run(bypass, env, cwd)
    if done.returncode == 0 or server.hits != before + 1:
        return f"{label}: curl reached the origin without the proxy ({shlex.join(bypass)})"
    return None


def run(budget: Budget) -> Result:
    result = Result(NAME, TITLE)
    srt = find_srt()
    if srt is None:
        result.skipped = f"srt was not found on PATH or in {REPO / 'tools/node_modules/.bin'}; {INSTALL}"
        return result
    missing = [tool for tool in ("bwrap", "socat", "rg", "node", "curl") if shutil.which(tool) is None]
    if missing:
        result.skipped = f"srt is installed but the comparison needs {', '.join(missing)} on PATH; {INSTALL} (and curl)"
        return result
    script = corral_script()
    if script is None:
        result.skipped = "the corral entry point was not found; run `make setup` (pip install -e .)"
        return result
    node = shutil.which("node") or "node"
    with (
        cli_environment() as env,
        tempfile.TemporaryDirectory(prefix="corral-bench-srt-") as scratch,
        origin() as server,
    ):
        workspace = Path(scratch) / "work"
        workspace.mkdir()
        target = f"127.0.0.1:{server.server_address[1]}"
        url = f"http://{target}/f"
        offline = _settings(Path(scratch) / "srt-offline.json", workspace, [])
        online = _settings(Path(scratch) / "srt-online.json", workspace, [target])

        def curl(*extra: str) -> list[str]:
            return ["curl", "-sS", *extra, "-o", "/dev/null", url]

        def corral_get(*extra: str) -> list[str]:
            return [str(script), "sandbox", "run", "--allow-domain", target, "--", *curl(*extra)]

        def srt_get(*extra: str) -> list[str]:
            # srt's NO_PROXY names loopback: --noproxy "" makes curl use srt's proxy all the same.
            return [srt, "--settings", str(online), "-c", shlex.join(curl("--noproxy", "", *extra))]

        commands = {
            CORRAL_TRUE: [str(script), "sandbox", "run", "--", "true"],
            SRT_TRUE: [srt, "--settings", str(offline), "-c", "true"],
            NODE: [node, "-e", "0"],
            CORRAL_GET: corral_get(),
            SRT_GET: srt_get(),
            CURL: curl("--noproxy", "*"),
        }
        result.error = check_commands(commands, env=env, cwd=workspace)
        if result.error is not None:
            return result
        status = ("-w", "%{http_code}")
        bypass = ("--noproxy", "*")
        for label, make in ((CORRAL_GET, corral_get), (SRT_GET, srt_get)):
            problem = _check_get(server, label, make(), make(*status), make(*bypass), env, workspace)
            if problem is not None:
                result.error = problem
                return result
        hits = server.hits
        times, how = time_commands(commands, budget, env=env, cwd=workspace)
        served = server.hits - hits
    series = {label: Series(label, values) for label, values in times.items()}
    result.series = list(series.values())
    corral, srt_run, node_run, corral_net, srt_net, curl_run = (series[label] for label in commands)
    result.notes.append(how)
    result.notes.append(f"srt {srt_version(srt)} at {srt}")
    result.notes.append(
        f"GET {url} ({len(BODY)} bytes): checked once per sandbox before timing (status 200 through the proxy; "
        f"direct connection refused); {served} requests served while timing"
    )
    result.notes.append(
        f"the GET's cost over `true` at p50: corral {fmt_ms(corral_net.p50 - corral.p50)}, "
        f"srt {fmt_ms(srt_net.p50 - srt_run.p50)} (the same curl on the host: {fmt_ms(curl_run.p50)})"
    )
    result.ratios["p50 corral / srt (true)"] = corral.p50 / srt_run.p50
    result.ratios["p90 corral / srt (true)"] = corral.p90 / srt_run.p90
    result.ratios["p50 corral / srt (proxied GET)"] = corral_net.p50 / srt_net.p50
    result.ratios["p90 corral / srt (proxied GET)"] = corral_net.p90 / srt_net.p90
    result.ratios["p50 srt / node -e 0"] = srt_run.p50 / node_run.p50
    result.notes.append("no target: informational (a ratio corral / srt below 1 means corral is faster)")
    return result
