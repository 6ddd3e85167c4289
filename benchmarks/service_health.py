"""``GET /healthz`` of a real ``corral serve`` under a bounded load from wrk, a second process on 127.0.0.1.

The subject is ``corral serve`` (its runner pool idle) started as users start it, on a free
127.0.0.1 port with a scratch ``CORRAL_HOME``. The baseline, measured in the same run, is the
same uvicorn serving a Starlette app that answers a fixed JSON body of the same size, so the
ratio is what corral's routing, its pool and its models add to the server it runs on. wrk
(Debian's ``wrk``) holds ``CONNECTIONS`` connections on one thread for ``SECONDS`` seconds
against each; its latency distribution gives p50 and p99, its count the requests per second.
``ServeProcess`` is shared with ``service_jobs``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from benchmarks import REPO
from benchmarks._stats import Budget, Result, Target

NAME = "service_health"
TITLE = "GET /healthz of corral serve under wrk from a second process vs bare uvicorn + Starlette"

CONNECTIONS = 8
SECONDS = 10
MIN_RPS = 1000.0
MAX_P99 = 0.020
START_TIMEOUT = 30.0

BASELINE_APP = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
BODY = {"status": "ok", "runner_id": "bench-0000000000", "version": "0.0.0", "capacity": 4,
        "active_sessions": 0, "draining": False, "last_poll_age_ms": 123}
async def healthz(request):
    return JSONResponse(BODY)
app = Starlette(routes=[Route("/healthz", healthz)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServeProcess:
    """A server subprocess on a free 127.0.0.1 port, ended by its PID when the ``with`` ends."""

    def __init__(self, argv: list[str], env: Mapping[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*argv, str(self.port)]
                if "{port}" not in argv
                else [a.replace("{port}", str(self.port)) for a in argv],
                env=dict(env),
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @classmethod
    def corral(cls, home: Path, log: Path, **env: str) -> ServeProcess:
        """``corral serve`` with ``home`` as ``CORRAL_HOME`` and local repositories allowed."""
        environ = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "CORRAL_HOME": str(home),
            "CORRAL_GIT_ALLOW_LOCAL": "1",
            **env,
        }
        return cls([sys.executable, "-m", "corral", "serve", "--port", "{port}"], environ, log)

    def __enter__(self) -> ServeProcess:
        import httpx

        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                msg = f"the server exited with {self.proc.returncode}: {self.output()[-1500:]}"
                raise RuntimeError(msg)
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.end()
        msg = f"the server did not answer within {START_TIMEOUT:g} s: {self.output()[-1500:]}"
        raise RuntimeError(msg)

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.end()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def end(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def parse_wrk(text: str) -> dict[str, float]:
    """``requests``, ``rps``, ``errors``, ``p50``, ``p75``, ``p90``, ``p99`` (seconds) from ``wrk --latency``."""
    found: dict[str, float] = {}
    for pct, value, unit in re.findall(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.MULTILINE):
        found[f"p{pct}"] = float(value) * _UNITS[unit]
    done = re.search(r"^\s*(\d+) requests in", text, re.MULTILINE)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.MULTILINE)
    errors = re.findall(r"(?:connect|read|write|timeout) (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if done is None or rps is None or len(found) != 4:
        msg = f"wrk printed no latency distribution: {text[-800:]}"
        raise RuntimeError(msg)
    found["requests"] = float(done.group(1))
    found["rps"] = float(rps.group(1))
    found["errors"] = float(sum(int(n) for n in errors) + (int(non2xx.group(1)) if non2xx else 0))
    return found


def load(wrk: str, url: str, seconds: int = SECONDS) -> dict[str, float]:
    """One bounded wrk run (one thread, ``CONNECTIONS`` connections, ``seconds``) against ``url``."""
    argv = [wrk, "--latency", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "5s", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        msg = f"wrk failed ({done.returncode}): {done.stderr.strip()[-600:]}"
        raise RuntimeError(msg)
    return parse_wrk(done.stdout)


def run(budget: Budget) -> Result:
    result = Result(NAME, TITLE)
    wrk = shutil.which("wrk")
    if wrk is None:
        result.skipped = "wrk is not installed (apt-get install --no-install-recommends wrk)"
        return result
    seconds = max(1, min(SECONDS, int(budget.max_seconds)))
    with tempfile.TemporaryDirectory(prefix="corral-bench-health-") as scratch:
        root = Path(scratch)
        environ = {"PATH": os.environ.get("PATH", os.defpath), "HOME": scratch, "LANG": "C.UTF-8"}
        baseline_argv = [sys.executable, "-c", BASELINE_APP]
        with ServeProcess.corral(root / "home", root / "corral.log") as corral:
            load(wrk, f"{corral.url}/healthz", 1)  # warm-up
            subject = load(wrk, f"{corral.url}/healthz", seconds)
        with ServeProcess(baseline_argv, environ, root / "baseline.log") as bare:
            load(wrk, f"{bare.url}/healthz", 1)
            baseline = load(wrk, f"{bare.url}/healthz", seconds)
    rows = [("server", "req/s", "p50", "p90", "p99", "requests", "errors")]
    for label, figures in (("corral serve /healthz", subject), ("uvicorn + Starlette (baseline)", baseline)):
        rows.append(
            (
                label,
                f"{figures['rps']:.0f}",
                *(f"{figures[p] * 1000:.2f} ms" for p in ("p50", "p90", "p99")),
                f"{figures['requests']:.0f}",
                f"{figures['errors']:.0f}",
            )
        )
    result.tables.append((f"wrk -t1 -c{CONNECTIONS} -d{seconds}s --latency, one after the other", rows))
    result.ratios["corral / baseline throughput"] = subject["rps"] / baseline["rps"]
    result.ratios["corral / baseline p99"] = subject["p99"] / baseline["p99"]
    result.targets.append(Target("1000 / (req/s)", 1000 / subject["rps"], 1000 / MIN_RPS, " s/1000 req"))
    result.targets.append(Target("p99", subject["p99"] * 1000, MAX_P99 * 1000, " ms"))
    result.targets.append(Target("errors and non-2xx answers", subject["errors"], 0))
    result.notes.append(
        f"corral serve: {subject['rps']:.0f} req/s, p99 {subject['p99'] * 1000:.2f} ms "
        f"(targets >= {MIN_RPS:.0f} req/s, "
        f"p99 <= {MAX_P99 * 1000:.0f} ms); {os.cpu_count()} CPUs shared by wrk and the server"
    )
    return result
