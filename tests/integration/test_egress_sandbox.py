"""A sandbox bridged to its egress proxy, end to end: real clients inside, servers on the host's 127.0.0.1.

Inside, curl, Python, git and npm find the relay through the proxy variables the sandbox gets.
Every server is the test's own, on 127.0.0.1; names resolve through a table, and the proxy may
dial 127.0.0.1 only (``tests.bridged`` guards it), so no packet leaves the host.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.egress.policy import Policy
from corral.sandbox.bwrap import BwrapSandbox
from corral.sandbox.spec import Limits, RunResult, SandboxSpec, Violation
from corral.settings import Settings
from tests.bridged import TIMEOUT, Bridge, Door, MakeBridge, Origins, bridges, relays, serve_origins, wait_for
from tests.tools import require, require_root

pytestmark = pytest.mark.sandbox

LIMITS = Limits(memory=1 << 30, pids=256, timeout=30)
CORRAL = str(Path(sys.executable).with_name("corral"))
WAIT_FOR = 'wait_for() { i=0; while [ ! -e "$1" ] && [ $i -lt 400 ]; do sleep 0.025; i=$((i+1)); done; }\n'
"""Shell: wait (at most 10 s) until the test creates the file named by $1 in the workspace."""


@pytest.fixture
def origins() -> Iterator[Origins]:
    with serve_origins() as servers:
        yield servers


@pytest.fixture
def make_bridge(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeBridge]:
    with bridges(settings, tmp_path, monkeypatch, {"allowed.test": ["127.0.0.1"]}) as make:
        yield make


@pytest.fixture
def bridge(make_bridge: MakeBridge) -> Bridge:
    return make_bridge()


def run(sandbox: BwrapSandbox, workspace: Path, door: Door | None, script: str, **kwargs: Any) -> RunResult:
    """Run a shell script in a sandbox whose egress is ``door`` (no network at all when ``None``)."""
    spec = SandboxSpec(
        command=("sh", "-c", script), workspace=workspace, egress=door.path if door else None, limits=LIMITS
    )
    return sandbox.run(spec, **kwargs)


# -- real clients through the bridge


def test_curl_plain_http_goes_through_the_proxy(
    sandbox: BwrapSandbox, workspace: Path, bridge: Bridge, origins: Origins
) -> None:
    """curl sends an absolute-URI request to the relay; the origin gets it in origin form."""
    target = f"127.0.0.1:{origins.http}"
    with bridge.door(Policy([target])) as door:
        result = run(sandbox, workspace, door, f"curl -sS http://{target}/plain")
    assert (result.exit_code, result.stdout, result.stderr) == (0, b"origin /plain\n", b"")
    assert [seen["requestline"] for seen in origins.seen] == ["GET /plain HTTP/1.1"]
    assert origins.seen[0]["headers"]["Connection"] == "close"  # the proxy's: one request per connection
    assert bridge.decisions(door) == [("allow", target)]
    assert door.violations == ()


def test_curl_tunnels_with_connect(sandbox: BwrapSandbox, workspace: Path, bridge: Bridge, origins: Origins) -> None:
    """curl -p opens a CONNECT tunnel through the relay and talks to the origin inside it."""
    target = f"127.0.0.1:{origins.http}"
    with bridge.door(Policy([target])) as door:
        result = run(sandbox, workspace, door, f"curl -sS -v -p http://{target}/tunnel")
    assert (result.exit_code, result.stdout) == (0, b"origin /tunnel\n")
    assert f"> CONNECT {target} HTTP/1.1".encode() in result.stderr
    assert b"< HTTP/1.1 200 Connection established" in result.stderr
    assert "Connection" not in origins.seen[0]["headers"]  # the proxy did not rewrite what went through the tunnel
    assert bridge.decisions(door) == [("allow", target)]


def test_curl_speaks_socks5_with_names_resolved_by_the_proxy(
    sandbox: BwrapSandbox, workspace: Path, bridge: Bridge, origins: Origins
) -> None:
    """curl over SOCKS5 (explicitly, and through ALL_PROXY alone) sends the name; the proxy resolves it.

    A SOCKS connection is an opaque tunnel, so the rule names the port (a rule for the name alone
    admits tunnels to TLS ports only)."""
    policy = Policy([f"allowed.test:{origins.http}", f"127.0.0.1:{origins.http}"])
    url = f"http://allowed.test:{origins.http}"
    script = (
        f"curl -sS --socks5-hostname 127.0.0.1:3128 {url}/socks\n"
        f"env -u http_proxy -u HTTP_PROXY curl -sS {url}/all-proxy\n"
    )
    with bridge.door(policy) as door:
        result = run(sandbox, workspace, door, script)
    assert (result.exit_code, result.stdout) == (0, b"origin /socks\norigin /all-proxy\n")
    assert [seen["requestline"] for seen in origins.seen] == ["GET /socks HTTP/1.1", "GET /all-proxy HTTP/1.1"]
    assert bridge.resolver.asked == ["allowed.test", "allowed.test"]
    assert bridge.decisions(door) == [("allow", f"allowed.test:{origins.http}")] * 2


def test_python_urllib_follows_the_proxy_variables(
    sandbox: BwrapSandbox, workspace: Path, bridge: Bridge, origins: Origins
) -> None:
    """Python's urllib reads http_proxy from the environment and reaches an allowed name."""
    url = f"http://allowed.test:{origins.http}/urllib"
    code = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode(), end='')"
    with bridge.door(Policy(["allowed.test", f"127.0.0.1:{origins.http}"])) as door:
        result = run(sandbox, workspace, door, f'python3 -c "{code}"')
    assert (result.exit_code, result.stdout) == (0, b"origin /urllib\n")
    assert bridge.decisions(door) == [("allow", f"allowed.test:{origins.http}")]


@contextlib.contextmanager
def tls_origin(directory: Path, name: str) -> Iterator[tuple[int, Path]]:
    """An HTTPS origin on 127.0.0.1 with a fresh self-signed certificate for ``name``; (port, cert path)."""
    openssl = require("openssl")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}"),
            *("-addext", f"subjectAltName=DNS:{name}"),
        ],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    handler = type("Origin", (_Hello,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield int(server.server_address[1]), cert
    finally:
        server.shutdown()
        server.server_close()


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        data = b"hello over tls\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_https_passes_the_sni_check_when_the_name_matches(
    sandbox: BwrapSandbox, workspace: Path, make_bridge: MakeBridge, tmp_path: Path
) -> None:
    """curl and Python's urllib reach an HTTPS origin through CONNECT; the ClientHello names the allowed host."""
    with tls_origin(tmp_path, "allowed.test") as (port, cert):
        bridge = make_bridge(tls_ports=frozenset({port}))  # so the proxy checks SNI on this port, as on 443
        shutil.copy(cert, workspace / "cert.pem")
        url = f"https://allowed.test:{port}/"
        code = (
            "import ssl, urllib.request; c = ssl.create_default_context(cafile='cert.pem'); "
            f"print(urllib.request.urlopen({url!r}, context=c, timeout=10).read().decode(), end='')"
        )
        with bridge.door(Policy(["allowed.test", f"127.0.0.1:{port}"])) as door:
            result = run(sandbox, workspace, door, f'curl -sS --cacert cert.pem {url}\npython3 -c "{code}"')
    assert (result.exit_code, result.stdout, result.stderr) == (0, b"hello over tls\n" * 2, b"")
    assert bridge.decisions(door) == [("allow", f"allowed.test:{port}")] * 2
    assert door.violations == ()


class _GitBackend(http.server.BaseHTTPRequestHandler):
    """Smart HTTP: each request runs ``git http-backend`` as a CGI program over ``root``."""

    root: Path
    requests: list[str]

    def _cgi(self) -> None:
        self.requests.append(self.requestline)
        path, _, query = self.path.partition("?")
        assert "Transfer-Encoding" not in self.headers  # a small clone never needs a chunked request
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(self.root),
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "REMOTE_ADDR": "127.0.0.1",
        }
        out = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, timeout=TIMEOUT, check=True
        ).stdout
        head, _, payload = re.split(rb"(\r?\n\r?\n)", out, maxsplit=1)
        headers = [line.split(b":", 1) for line in head.splitlines()]
        status = next((int(value.split()[0]) for name, value in headers if name.lower() == b"status"), 200)
        self.send_response(status)
        for name, value in headers:
            if name.lower() != b"status":
                self.send_header(name.decode(), value.strip().decode())
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _cgi

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_git_clones_over_smart_http(sandbox: BwrapSandbox, workspace: Path, bridge: Bridge, tmp_path: Path) -> None:
    """git inside clones a repository from a git http-backend on the host's 127.0.0.1, through the proxy."""
    require("git")
    source = tmp_path / "src"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(source)]
    source.mkdir()
    (source / "README").write_text("cloned through the proxy\n")
    for args in (["init", "-q", "-b", "main"], ["add", "README"], ["commit", "-q", "-m", "first commit"]):
        subprocess.run([*git, *args], check=True, timeout=TIMEOUT)
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(tmp_path / "repos" / "r.git")], check=True)
    requests: list[str] = []
    with serve(type("Git", (_GitBackend,), {"root": tmp_path / "repos", "requests": requests})) as port:
        script = (
            f"git clone -q http://127.0.0.1:{port}/r.git /tmp/r && cat /tmp/r/README && git -C /tmp/r log --format=%s"
        )
        with bridge.door(Policy([f"127.0.0.1:{port}"])) as door:
            result = run(sandbox, workspace, door, script)
    assert (result.exit_code, result.stdout) == (0, b"cloned through the proxy\nfirst commit\n"), result.stderr
    assert requests[0] == "GET /r.git/info/refs?service=git-upload-pack HTTP/1.1"
    assert "POST /r.git/git-upload-pack HTTP/1.1" in requests
    assert bridge.decisions(door) == [("allow", f"127.0.0.1:{port}")] * len(requests)


def _npm_package(name: str, version: str) -> bytes:
    """A gzipped npm tarball: package/package.json and package/index.js."""
    files = {
        "package/package.json": json.dumps({"name": name, "version": version, "main": "index.js"}).encode(),
        "package/index.js": b"module.exports = (s) => `padded ${s}`;\n",
    }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


class _Registry(http.server.BaseHTTPRequestHandler):
    """A stand-in for the npm registry serving one package: its packument and its tarball."""

    files: dict[str, bytes]
    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        data = self.files.get(self.path)
        self.send_response(200 if data is not None else 404)
        self.send_header("Content-Type", "application/json" if not self.path.endswith(".tgz") else "application/gzip")
        self.send_header("Content-Length", str(len(data or b"")))
        self.end_headers()
        self.wfile.write(data or b"")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_npm_installs_from_a_loopback_registry(sandbox: BwrapSandbox, workspace: Path, bridge: Bridge) -> None:
    """npm inside installs a package from a registry on the host's 127.0.0.1, through the proxy."""
    require("npm")
    name, version = "corral-pad", "1.0.0"
    tarball = _npm_package(name, version)
    files: dict[str, bytes] = {}
    requests: list[str] = []
    with serve(type("Registry", (_Registry,), {"files": files, "requests": requests})) as port:
        registry = f"http://127.0.0.1:{port}"
        tgz = f"/{name}/-/{name}-{version}.tgz"
        integrity = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
        dist = {"tarball": registry + tgz, "shasum": hashlib.sha1(tarball).hexdigest(), "integrity": integrity}
        manifest = {"name": name, "version": version, "main": "index.js", "dist": dist}
        files[tgz] = tarball
        files[f"/{name}"] = json.dumps(
            {"name": name, "dist-tags": {"latest": version}, "versions": {version: manifest}}
        ).encode()
        script = (
            f"npm install --registry {registry} --no-audit --no-fund --no-update-notifier --loglevel=error {name}"
            f" && node -e \"console.log(require('{name}')('by npm'))\""
        )
        with bridge.door(Policy([f"127.0.0.1:{port}"])) as door:
            result = run(sandbox, workspace, door, script)
    assert (result.exit_code, result.stdout.splitlines()[-1:]) == (0, [b"padded by npm"]), result.stderr
    assert requests == [f"/{name}", tgz]
    assert bridge.decisions(door) == [("allow", f"127.0.0.1:{port}")] * 2


# -- what the bridge refuses, and how it says so


def test_without_allow_domain_there_is_no_network(sandbox: BwrapSandbox, workspace: Path, bridge: Bridge) -> None:
    """A sandbox without egress gets no proxy variables, no relay, and nothing listening on 3128."""
    code = (
        "import errno, os, socket\n"
        "print(sorted(k for k in os.environ if 'proxy' in k.lower()))\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', 3128), timeout=2)\n"
        "except OSError as err:\n"
        "    print(errno.errorcode[err.errno])\n"
        "print(len(open('/proc/net/tcp').read().splitlines()) - 1, 'tcp sockets')\n"
    )
    started: list[list[int]] = []
    result = run(sandbox, workspace, None, f'python3 -c "{code}"', on_start=lambda _: started.append(relays()))
    assert (result.exit_code, result.stdout) == (0, b"[]\nECONNREFUSED\n0 tcp sockets\n")
    assert started == [[]]


def test_a_denied_host_gets_403_with_the_reason(
    sandbox: BwrapSandbox, workspace: Path, bridge: Bridge, origins: Origins
) -> None:
    """curl gets 403 with X-Corral-Denied for a plain request and for a CONNECT; the name is never resolved."""
    script = 'curl -sS -i http://denied.test/x\necho\ncurl -sS -v -p http://denied.test/x; echo "exit $?"\n'
    with bridge.door(Policy([f"127.0.0.1:{origins.http}"])) as door:
        result = run(sandbox, workspace, door, script)
    reason = "denied.test:80 is not in the allowlist"
    assert result.stdout.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert f"\r\nX-Corral-Denied: {reason}\r\n".encode() in result.stdout
    assert result.stdout.endswith(b"exit 56\n")  # curl: the CONNECT was refused
    assert f"< X-Corral-Denied: {reason}".encode() in result.stderr
    assert door.violations == (Violation("network", "denied.test:80", reason),) * 2
    assert bridge.decisions(door) == [("deny", "denied.test:80")] * 2
    assert bridge.resolver.asked == []
    assert origins.seen == []


def corral(*args: str, home: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "CORRAL_HOME": str(home), "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run([CORRAL, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_the_cli_reports_violations(tmp_path: Path, workspace: Path, origins: Origins) -> None:
    """`corral sandbox run --allow-domain` lets the allowed request through and lists the refused one."""
    require_root()
    require("bwrap")
    require("socat")
    target = f"127.0.0.1:{origins.http}"
    script = f"curl -sS http://{target}/cli; curl -sS -o /dev/null http://denied.test/"
    proc = corral(
        *("sandbox", "run", "--workspace", str(workspace), "--allow-domain", target, "--timeout", "30s"),
        *("--audit-log", str(tmp_path / "audit.jsonl"), "--", "sh", "-c", script),
        home=tmp_path / "home",
    )
    assert (proc.returncode, proc.stdout) == (0, "origin /cli\n"), proc.stderr
    violations = "network denied.test:80: denied.test:80 is not in the allowlist"
    assert proc.stderr == f"<sandbox_violations>\n{violations}\n</sandbox_violations>\n"
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(line["verdict"], line["host"]) for line in lines] == [("allow", "127.0.0.1"), ("deny", "denied.test")]


def run_steps(
    sandbox: BwrapSandbox, workspace: Path, door: Door, urls: list[str], between: Callable[[int], None]
) -> list[str]:
    """Run a sandbox that fetches ``urls`` one by one, each once the test lets it (``between(step)`` first)."""
    script = WAIT_FOR + "".join(
        f"wait_for go{step}; curl -s -o /dev/null -w '%{{http_code}}' {url} > r.tmp; mv r.tmp result{step}\n"
        for step, url in enumerate(urls)
    )
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(run, sandbox, workspace, door, script)
        codes = []
        for step in range(len(urls)):
            between(step)
            (workspace / f"go{step}").touch()
            wait_for(lambda step=step: (workspace / f"result{step}").exists() or running.done(), TIMEOUT)
            codes.append((workspace / f"result{step}").read_text())
        assert running.result(TIMEOUT).ok
    return codes


def test_the_allowlist_of_a_running_sandbox_can_widen_and_narrow(
    sandbox: BwrapSandbox, workspace: Path, bridge: Bridge, origins: Origins
) -> None:
    """set_policy on a running sandbox's endpoint takes effect for its next request, both ways."""
    first, second = f"127.0.0.1:{origins.http}", f"127.0.0.1:{origins.other}"
    policies = [Policy([first]), Policy([first, second]), Policy([first])]
    with bridge.door(policies[0]) as door:
        codes = run_steps(
            sandbox, workspace, door, [f"http://{second}/"] * 3, lambda step: door.endpoint.set_policy(policies[step])
        )
    assert codes == ["403", "200", "403"]
    assert bridge.decisions(door) == [("deny", second), ("allow", second), ("deny", second)]


def test_two_sandboxes_at_once_each_see_only_their_own_allowlist(
    sandbox: BwrapSandbox, tmp_path: Path, bridge: Bridge, origins: Origins
) -> None:
    """Two sandboxes run together, each allowed a different origin; each reaches its own and not the other's."""
    targets = [f"127.0.0.1:{origins.http}", f"127.0.0.1:{origins.other}"]
    script = (
        WAIT_FOR
        + "touch ready; wait_for go; "
        + "; ".join(f"curl -s -o /dev/null -w '%{{http_code}} ' http://{target}/" for target in targets)
    )
    workspaces = [tmp_path / "one", tmp_path / "two"]
    for ws in workspaces:
        ws.mkdir()
    with (
        bridge.door(Policy(targets[:1])) as one,
        bridge.door(Policy(targets[1:])) as two,
        concurrent.futures.ThreadPoolExecutor(2) as pool,
    ):
        runs = [pool.submit(run, sandbox, ws, door, script) for ws, door in zip(workspaces, (one, two), strict=True)]
        for ws, future in zip(workspaces, runs, strict=True):
            wait_for(
                lambda ws=ws, future=future: (ws / "ready").exists() or future.done(), TIMEOUT, f"{ws.name} started"
            )
            assert not future.done(), future.result()
        for ws in workspaces:
            (ws / "go").touch()  # both are running now
        results = [future.result(TIMEOUT * 2) for future in runs]
    assert [result.stdout for result in results] == [b"200 403 ", b"403 200 "]
    assert len({result.sandbox_id for result in results}) == 2
    assert bridge.decisions(one) == [("allow", targets[0]), ("deny", targets[1])]
    assert bridge.decisions(two) == [("deny", targets[0]), ("allow", targets[1])]
    assert [v.target for v in one.violations] == [targets[1]]
    assert [v.target for v in two.violations] == [targets[0]]


def test_the_audit_log_records_every_decision_and_catches_tampering(
    sandbox: BwrapSandbox, workspace: Path, bridge: Bridge, origins: Origins, tmp_path: Path
) -> None:
    """Each decision is one chained line; `corral audit verify` says intact, and exits 1 after an edit or a removal."""
    allowed = f"127.0.0.1:{origins.http}"
    script = (
        f"curl -s -o /dev/null http://{allowed}/a; curl -s -o /dev/null -p http://{allowed}/b\n"
        "curl -s -o /dev/null http://denied.test/; curl -s -o /dev/null --socks5-hostname 127.0.0.1:3128 http://denied.test/\n"
        f"curl -s -o /dev/null http://127.0.0.1:{origins.other}/\n"
    )
    with bridge.door(Policy([allowed])) as door:
        run(sandbox, workspace, door, script)
    lines = bridge.records(door)
    assert [(line["verdict"], line["host"], line["port"]) for line in lines] == [
        ("allow", "127.0.0.1", origins.http),
        ("allow", "127.0.0.1", origins.http),
        ("deny", "denied.test", 80),
        ("deny", "denied.test", 80),
        ("deny", "127.0.0.1", origins.other),
    ]
    assert all(line["bytes_down"] > 0 for line in lines[:2])
    assert [line["address"] for line in lines] == ["127.0.0.1", "127.0.0.1", None, None, None]
    log = bridge.audit.path
    intact = corral("audit", "verify", str(log), home=tmp_path / "home")
    assert (intact.returncode, intact.stdout) == (0, f"{log}: intact, 5 line(s), every hash chained\n")

    def tampered(name: str, change: Callable[[list[str]], list[str]]) -> subprocess.CompletedProcess[str]:
        copy = tmp_path / name / log.name
        copy.parent.mkdir()
        shutil.copy(log.with_name(log.name + ".head"), copy.with_name(log.name + ".head"))
        copy.write_text("".join(change(log.read_text().splitlines(keepends=True))))
        return corral("audit", "verify", str(copy), home=tmp_path / "home")

    edited = tampered("edited", lambda ls: [*ls[:2], ls[2].replace('"deny"', '"allow"'), *ls[3:]])
    removed = tampered("removed", lambda ls: [*ls[:3], *ls[4:]])
    for proc in (edited, removed):
        assert proc.returncode == 1
        assert "TAMPERED" in proc.stdout
        assert proc.stderr
