"""The egress proxy for real: Unix-socket endpoints, real clients, origin servers on 127.0.0.1 only.

No test sends traffic to any address but 127.0.0.1. Names are resolved by an injected table;
the cloud metadata address is refused before any dial, which a spy on the dialer asserts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import http.server
import json
import os
import socket
import socketserver
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.egress import AuditLog, Policy, ProxyConfig, ProxyThread, StaticResolver, connection, verify
from corral.egress import proxy as proxy_module
from corral.egress.endpoint import Endpoint
from corral.egress.tls import ALERT_UNRECOGNIZED_NAME
from corral.errors import UsageError
from tests.tools import require

TIMEOUT = 10.0


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


# -- origin servers, all on 127.0.0.1


class _Servers:
    def __init__(self) -> None:
        self.started: list[socketserver.BaseServer] = []

    def start(self, server: socketserver.TCPServer) -> int:
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.started.append(server)
        return int(server.server_address[1])

    def close(self) -> None:
        for server in self.started:
            server.shutdown()
            server.server_close()


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(TIMEOUT)
        with contextlib.suppress(OSError):
            for _ in range(100_000):
                data = self.request.recv(65536)
                if not data:
                    break
                self.request.sendall(data)


class _Source(socketserver.BaseRequestHandler):
    """Reads a decimal byte count and a newline, sends that many pattern bytes, closes."""

    def handle(self) -> None:
        line = b""
        while not line.endswith(b"\n") and len(line) < 32:
            byte = self.request.recv(1)
            if not byte:
                return
            line += byte
        size = int(line)
        block = bytes(range(256)) * 1024
        sent = 0
        while sent < size:
            sent += self.request.send(block[: min(len(block), size - sent)])


@dataclasses.dataclass
class Sink:
    port: int
    received: list[bytes]


def _sink_handler(received: list[bytes]) -> type[socketserver.BaseRequestHandler]:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.settimeout(TIMEOUT)
            data = b""
            with contextlib.suppress(OSError):
                for _ in range(10_000):
                    chunk = self.request.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            received.append(data)

    return Handler


class _Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]]

    def _answer(self) -> None:
        body = b""
        if self.headers.get("Content-Length"):
            body = self.rfile.read(int(self.headers["Content-Length"]))
        elif self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            for _ in range(1000):
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        seen = {"requestline": self.requestline, "headers": list(self.headers.items()), "body": body.decode()}
        self.seen.append(seen)
        data = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclasses.dataclass
class Origins:
    echo: int
    source: int
    http: int
    http_seen: list[dict[str, Any]]
    sink: Sink
    closed: int
    """A port nothing listens on."""


@pytest.fixture
def origins() -> Iterator[Origins]:
    servers = _Servers()
    seen: list[dict[str, Any]] = []
    handler = type("Origin", (_Origin,), {"seen": seen})
    http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    http_server.daemon_threads = True
    received: list[bytes] = []
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    try:
        yield Origins(
            echo=servers.start(_TCPServer(("127.0.0.1", 0), _Echo)),
            source=servers.start(_TCPServer(("127.0.0.1", 0), _Source)),
            http=servers.start(http_server),
            http_seen=seen,
            sink=Sink(servers.start(_TCPServer(("127.0.0.1", 0), _sink_handler(received))), received),
            closed=closed,
        )
    finally:
        servers.close()


# -- the proxy under test


@dataclasses.dataclass
class Harness:
    thread: ProxyThread
    endpoint: Endpoint
    path: Path
    resolver: StaticResolver
    audit: AuditLog

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.path.read_text().splitlines()]

    def wait_records(self, count: int) -> list[dict[str, Any]]:
        wait_for(lambda: len(self.records()) >= count)
        return self.records()

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        sock.connect(str(self.path))
        return sock


MakeProxy = Callable[..., Harness]


@pytest.fixture
def make_proxy(tmp_path: Path) -> Iterator[MakeProxy]:
    made: list[Harness] = []

    def make(
        allow: tuple[str, ...] | list[str] = (),
        deny: tuple[str, ...] = (),
        names: dict[str, list[str]] | None = None,
        **config: Any,
    ) -> Harness:
        n = len(made)
        resolver = StaticResolver(names or {})
        audit = AuditLog(tmp_path / f"audit{n}.jsonl")
        settings = ProxyConfig(**{"handshake_timeout": 5.0, "linger": 0.5, **config})
        thread = ProxyThread(settings, audit=audit, resolver=resolver)
        path = tmp_path / f"p{n}.sock"
        harness = Harness(thread, thread.open(f"sb{n}", path, Policy(allow, deny)), path, resolver, audit)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.thread.stop()
        harness.audit.close()
        assert verify(harness.audit.path) == []


# -- client helpers


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    for _ in range(10_000):
        if b"\r\n\r\n" in data:
            break
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    for _ in range(10_000):
        if len(body) >= length:
            break
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body


def exchange(harness: Harness, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with harness.connect() as sock:
        sock.sendall(raw)
        return read_response(sock)


def get(harness: Harness, url: str, host: str, *extra: str) -> tuple[int, dict[str, str], bytes]:
    lines = [f"GET {url} HTTP/1.1", f"Host: {host}", *extra]
    return exchange(harness, ("\r\n".join(lines) + "\r\n\r\n").encode())


def tunnel(harness: Harness, target: str) -> tuple[socket.socket, int, dict[str, str]]:
    sock = harness.connect()
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    data = b""
    for _ in range(1000):
        if b"\r\n\r\n" in data:
            break
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    if not data.startswith(b"HTTP/1.1 200"):
        status, headers, _ = read_response(_Prefixed(sock, data))  # type: ignore[arg-type]
        return sock, status, headers
    return sock, 200, {}


def tunnel_status(harness: Harness, target: str) -> int:
    sock, status, _ = tunnel(harness, target)
    sock.close()
    return status


class _Prefixed:
    def __init__(self, sock: socket.socket, data: bytes) -> None:
        self.sock, self.data = sock, data

    def recv(self, size: int) -> bytes:
        if self.data:
            data, self.data = self.data, b""
            return data
        return self.sock.recv(size)


def socks_connect(harness: Harness, host: str, port: int) -> tuple[socket.socket, int]:
    sock = harness.connect()
    sock.sendall(b"\x05\x01\x00")
    assert sock.recv(2) == b"\x05\x00"
    try:
        address = b"\x01" + socket.inet_aton(host)
    except OSError:
        address = b"\x03" + bytes([len(host)]) + host.encode()
    sock.sendall(b"\x05\x01\x00" + address + port.to_bytes(2, "big"))
    reply = recv_exactly(sock, 10)
    return sock, reply[1]


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    for _ in range(100_000):
        if len(data) >= size:
            break
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def recv_all(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionResetError):
        for _ in range(100_000):
            chunk = sock.recv(1 << 18)
            if not chunk:
                break
            data += chunk
    return data


def echo_roundtrip(sock: socket.socket, payload: bytes = b"ping") -> bytes:
    sock.sendall(payload)
    return recv_exactly(sock, len(payload))


def client_hello(server_hostname: str | None) -> bytes:
    context = ssl.create_default_context()
    if server_hostname is None:
        context.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


# -- the tests


def test_connect_allowed_by_ip_and_port(make_proxy: MakeProxy, origins: Origins) -> None:
    proxy = make_proxy([f"127.0.0.1:{origins.echo}"])
    sock, status, _ = tunnel(proxy, f"127.0.0.1:{origins.echo}")
    with sock:
        assert status == 200
        assert echo_roundtrip(sock, b"hello through the tunnel") == b"hello through the tunnel"
    (line,) = proxy.wait_records(1)
    assert line["verdict"] == "allow"
    assert (line["host"], line["port"], line["address"]) == ("127.0.0.1", origins.echo, "127.0.0.1")
    assert line["rule"] == f"127.0.0.1:{origins.echo}"
    assert (line["bytes_up"], line["bytes_down"]) == (24, 24)
    assert line["sandbox"] == "sb0"
    assert proxy.endpoint.violations() == ()


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "copy"])
def test_a_large_download_arrives_intact_and_is_counted(
    make_proxy: MakeProxy, origins: Origins, monkeypatch: pytest.MonkeyPatch, splice: bool
) -> None:
    if not splice:  # as when os.splice is missing or no file descriptor is left for a pipe
        monkeypatch.setattr(connection, "_pipe", lambda: None)
    proxy = make_proxy([f"127.0.0.1:{origins.source}"])
    size = 32 << 20
    sock, status, _ = tunnel(proxy, f"127.0.0.1:{origins.source}")
    with sock:
        assert status == 200
        sock.sendall(f"{size}\n".encode())
        data = recv_all(sock)
    expected = (bytes(range(256)) * 1024 * (size // (256 * 1024) + 1))[:size]
    assert hashlib.sha256(data).digest() == hashlib.sha256(expected).digest()
    (line,) = proxy.wait_records(1)
    assert line["bytes_down"] == size


def test_a_slow_reader_gets_everything(make_proxy: MakeProxy, origins: Origins) -> None:
    proxy = make_proxy([f"127.0.0.1:{origins.source}"])
    size = 8 << 20
    sock, _, _ = tunnel(proxy, f"127.0.0.1:{origins.source}")
    with sock:
        sock.sendall(f"{size}\n".encode())
        time.sleep(0.5)  # every buffer on the way fills up; the proxy must stop reading, not grow
        got = 0
        for _ in range(100_000):
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += len(chunk)
    assert got == size


def test_half_close_lets_the_answer_through(make_proxy: MakeProxy, origins: Origins) -> None:
    proxy = make_proxy([f"127.0.0.1:{origins.echo}"])
    sock, _status, _ = tunnel(proxy, f"127.0.0.1:{origins.echo}")
    with sock:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"last words"


def test_absolute_get_is_forwarded_in_origin_form(make_proxy: MakeProxy, origins: Origins) -> None:
    proxy = make_proxy([f"127.0.0.1:{origins.http}"])
    target = f"127.0.0.1:{origins.http}"
    status, _headers, body = get(
        proxy, f"http://{target}/a/b?c=d", target, "Proxy-Connection: keep-alive", "Proxy-Authorization: Basic eA=="
    )
    assert status == 200
    seen = json.loads(body)
    assert seen["requestline"] == "GET /a/b?c=d HTTP/1.1"
    names = [name.lower() for name, _ in seen["headers"]]
    assert "proxy-connection" not in names
    assert "proxy-authorization" not in names
    assert ["Connection", "close"] in seen["headers"]
    (line,) = proxy.wait_records(1)
    assert line["verdict"] == "allow"
    assert line["bytes_down"] > len(body)


def test_request_bodies_are_forwarded_and_nothing_after_them(make_proxy: MakeProxy, origins: Origins) -> None:
    proxy = make_proxy([f"127.0.0.1:{origins.http}", f"127.0.0.1:{origins.sink.port}"])
    target = f"127.0.0.1:{origins.http}"
    post = f"POST http://{target}/up HTTP/1.1\r\nHost: {target}\r\nContent-Length: 5\r\n\r\nhello"
    status, _, body = exchange(proxy, post.encode())
    assert (status, json.loads(body)["body"]) == (200, "hello")
    chunked = f"POST http://{target}/up HTTP/1.1\r\nHost: {target}\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, _, body = exchange(proxy, chunked.encode() + b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert (status, json.loads(body)["body"]) == (200, "abcde")
    # bytes after the one request a connection may carry never reach the origin
    sink = f"127.0.0.1:{origins.sink.port}"
    smuggle = f"POST http://{sink}/ HTTP/1.1\r\nHost: {sink}\r\nContent-Length: 3\r\n\r\nabcGET /admin HTTP/1.1\r\n\r\n"
    with proxy.connect() as sock:
        sock.sendall(smuggle.encode())
        wait_for(lambda: proxy.endpoint.active == 1)
        time.sleep(0.2)
    wait_for(lambda: len(origins.sink.received) == 1)
    assert origins.sink.received[0].endswith(b"Connection: close\r\n\r\nabc")


def test_socks5_allowed_by_name(make_proxy: MakeProxy, origins: Origins) -> None:
    proxy = make_proxy([f"api.test:{origins.echo}", f"127.0.0.1:{origins.echo}"], names={"api.test": ["127.0.0.1"]})
    sock, code = socks_connect(proxy, "api.test", origins.echo)
    with sock:
        assert code == 0
        assert echo_roundtrip(sock) == b"ping"
    (line,) = proxy.wait_records(1)
    assert (line["verdict"], line["rule"], line["address"]) == ("allow", f"api.test:{origins.echo}", "127.0.0.1")
    assert proxy.resolver.asked == ["api.test"]


def test_socks5_denied_with_reply_2_and_no_dns(make_proxy: MakeProxy, origins: Origins) -> None:
    proxy = make_proxy(["api.test"], names={"evil.test": ["127.0.0.1"]})
    sock, code = socks_connect(proxy, "evil.test", origins.echo)
    with sock:
        assert code == 2  # connection not allowed by ruleset
        assert recv_all(sock) == b""
    sock, code = socks_connect(proxy, "127.0.0.1", origins.echo)
    sock.close()
    assert code == 2
    assert proxy.resolver.asked == []
    assert [v.target for v in proxy.endpoint.violations()] == [f"evil.test:{origins.echo}", f"127.0.0.1:{origins.echo}"]
    assert {line["verdict"] for line in proxy.wait_records(2)} == {"deny"}


def test_socks5_without_no_auth_is_refused(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(["api.test"])
    with proxy.connect() as sock:
        sock.sendall(b"\x05\x01\x02")
        assert recv_all(sock) == b"\x05\xff"
    assert "no 'no authentication' method" in proxy.endpoint.violations()[0].detail


def test_denied_name_gets_403_with_the_reason(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(["api.test"], names={"evil.test": ["127.0.0.1"]})
    status, headers, body = get(proxy, "http://evil.test/steal", "evil.test")
    assert status == 403
    assert headers["x-corral-denied"] == "evil.test:80 is not in the allowlist"
    assert b"evil.test:80 is not in the allowlist" in body
    sock, status, headers = tunnel(proxy, "evil.test:443")
    sock.close()
    assert (status, headers["x-corral-denied"]) == (403, "evil.test:443 is not in the allowlist")
    assert proxy.resolver.asked == [], "a denied name is never resolved"
    violations = proxy.endpoint.violations()
    assert [(v.kind, v.target) for v in violations] == [("network", "evil.test:80"), ("network", "evil.test:443")]
    lines = proxy.wait_records(2)
    assert [(line["verdict"], line["host"], line["rule"], line["address"]) for line in lines] == [
        ("deny", "evil.test", None, None),
        ("deny", "evil.test", None, None),
    ]


def test_allowed_name_resolving_to_loopback_is_refused_by_the_vet(make_proxy: MakeProxy, origins: Origins) -> None:
    proxy = make_proxy(
        ["api.test", "rebind.test"], names={"api.test": ["127.0.0.1"], "rebind.test": ["93.184.216.34", "::1"]}
    )
    status, headers, _ = get(proxy, f"http://api.test:{origins.http}/", f"api.test:{origins.http}")
    assert status == 403
    assert headers["x-corral-denied"] == (
        "api.test resolved to 127.0.0.1, a loopback address; "
        f"only an allow rule for exactly 127.0.0.1:{origins.http} reaches it"
    )
    sock, status, headers = tunnel(proxy, "rebind.test:443")  # one bad address refuses the name
    sock.close()
    assert status == 403
    assert "::1, a loopback address" in headers["x-corral-denied"]
    assert origins.http_seen == []
    first, second = proxy.wait_records(2)
    assert (first["verdict"], first["address"], first["rule"]) == ("deny", "127.0.0.1", None)
    assert (second["verdict"], second["address"]) == ("deny", "::1")


def test_cloud_metadata_is_refused_and_never_dialed(make_proxy: MakeProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    dialed: list[object] = []

    async def spy(addresses: list[str], port: int, timeout: float) -> None:
        dialed.append(addresses)
        raise AssertionError("the proxy dialed")

    monkeypatch.setattr(proxy_module, "dial", spy)
    proxy = make_proxy(["169.254.169.254", "metadata.test"], names={"metadata.test": ["169.254.169.254"]})
    status, headers, _ = get(proxy, "http://169.254.169.254/latest/meta-data/", "169.254.169.254")
    assert status == 403
    assert headers["x-corral-denied"] == (
        "169.254.169.254 is a cloud metadata address; only an allow rule for exactly 169.254.169.254:80 reaches it"
    )
    sock, code = socks_connect(proxy, "metadata.test", 80)
    sock.close()
    assert code == 2
    sock, code = socks_connect(proxy, "[::ffff:169.254.169.254]", 80)
    sock.close()
    assert code == 2
    assert dialed == []
    lines = proxy.wait_records(3)
    assert all(line["verdict"] == "deny" and "cloud metadata" in line["reason"] for line in lines)
    assert all(line["bytes_up"] == line["bytes_down"] == 0 for line in lines)


def test_sni_must_name_the_allowed_host(make_proxy: MakeProxy, origins: Origins) -> None:
    port = origins.sink.port
    proxy = make_proxy(
        ["api.test", f"127.0.0.1:{port}"], names={"api.test": ["127.0.0.1"]}, tls_ports=frozenset({port})
    )
    sink = origins.sink.received

    def attempt(hello: bytes, target: str = f"api.test:{port}", refused: bool = True) -> bytes:
        sock, status, _ = tunnel(proxy, target)
        with sock:
            assert status == 200
            sock.sendall(hello)
            answer = recv_all(sock) if refused else b""
        wait_for(lambda: len(sink) == count + 1)
        return answer

    good = client_hello("api.test")
    count = 0
    for hello in (client_hello("other.test"), client_hello(None), b"GET / HTTP/1.1\r\n\r\n"):
        assert attempt(hello) == ALERT_UNRECOGNIZED_NAME
        assert sink[count] == b"", "a refused tunnel passes nothing on"
        count += 1
    attempt(good, refused=False)
    assert sink[count] == good
    count += 1
    attempt(client_hello(None), f"127.0.0.1:{port}", refused=False)  # no SNI is fine for an IP literal
    assert sink[count] != b""
    details = [v.detail for v in proxy.endpoint.violations()]
    assert len(details) == 3
    assert "names 'other.test', not api.test: domain fronting is refused" in details[0]
    assert "names no server (SNI)" in details[1]
    assert "does not start with a TLS ClientHello" in details[2]
    lines = proxy.wait_records(5)
    assert [line["verdict"] for line in lines] == ["deny", "deny", "deny", "allow", "allow"]


def test_sni_is_checked_for_socks_too(make_proxy: MakeProxy, origins: Origins) -> None:
    port = origins.sink.port
    proxy = make_proxy(
        ["api.test", f"127.0.0.1:{port}"], names={"api.test": ["127.0.0.1"]}, tls_ports=frozenset({port})
    )
    sock, code = socks_connect(proxy, "api.test", port)
    with sock:
        assert code == 0
        sock.sendall(client_hello("front.test"))
        assert recv_all(sock) == ALERT_UNRECOGNIZED_NAME
    assert "domain fronting" in proxy.endpoint.violations()[0].detail


def test_host_header_disagreeing_with_the_url_is_refused(make_proxy: MakeProxy, origins: Origins) -> None:
    proxy = make_proxy([f"127.0.0.1:{origins.http}", "api.test"])
    status, headers, _ = get(proxy, f"http://127.0.0.1:{origins.http}/", "api.test")
    assert status == 403
    assert "disagrees with the URL authority" in headers["x-corral-denied"]
    assert origins.http_seen == []
    (line,) = proxy.wait_records(1)
    assert (line["verdict"], line["host"], line["port"]) == ("deny", "127.0.0.1", origins.http)


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        (["Content-Length: 1", "Content-Length: 1"], "2 content-length headers"),
        (["Content-Length: 1", "Transfer-Encoding: chunked"], "both Content-Length and Transfer-Encoding"),
        (["X-A: 1", " folded"], "obs-fold"),
        (["Bad Header: 1"], "is not 'Name: value'"),
    ],
)
def test_smuggling_shapes_get_400(make_proxy: MakeProxy, origins: Origins, extra: list[str], why: str) -> None:
    proxy = make_proxy([f"127.0.0.1:{origins.http}"])
    target = f"127.0.0.1:{origins.http}"
    status, headers, _ = get(proxy, f"http://{target}/", target, *extra)
    assert status == 400
    assert why in headers["x-corral-denied"]
    assert origins.http_seen == []
    assert proxy.wait_records(1)[0]["verdict"] == "deny"


def test_origin_form_request_gets_400(make_proxy: MakeProxy, origins: Origins) -> None:
    proxy = make_proxy([f"127.0.0.1:{origins.http}"])
    status, headers, _ = get(proxy, "/index.html", f"127.0.0.1:{origins.http}")
    assert status == 400
    assert "not an absolute http:// URI" in headers["x-corral-denied"]


def test_unreachable_upstream_is_502_and_socks_5(make_proxy: MakeProxy, origins: Origins) -> None:
    proxy = make_proxy([f"127.0.0.1:{origins.closed}", "nowhere.test"])
    target = f"127.0.0.1:{origins.closed}"
    status, headers, _ = get(proxy, f"http://{target}/", target)
    assert status == 502
    assert "cannot connect to" in headers["x-corral-error"]
    sock, code = socks_connect(proxy, "127.0.0.1", origins.closed)
    sock.close()
    assert code == 5
    status, headers, _ = get(proxy, "http://nowhere.test/", "nowhere.test")
    assert status == 502
    assert "could not be resolved" in headers["x-corral-error"]
    assert proxy.endpoint.violations() == ()
    assert [line["verdict"] for line in proxy.wait_records(3)] == ["allow"] * 3


def test_tunnel_is_closed_at_its_lifetime(make_proxy: MakeProxy, origins: Origins) -> None:
    proxy = make_proxy([f"127.0.0.1:{origins.echo}"], tunnel_lifetime=0.6, idle_timeout=30)
    sock, _, _ = tunnel(proxy, f"127.0.0.1:{origins.echo}")
    started = time.monotonic()
    with sock:
        for _ in range(100):  # busy all along: only the lifetime can end it
            try:
                sock.sendall(b"x")
                if sock.recv(16) == b"":
                    break
            except OSError:
                break
            time.sleep(0.05)
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 3
    (line,) = proxy.wait_records(1)
    assert "closed at the 0.6 s tunnel lifetime" in line["reason"]


def test_tunnel_is_closed_when_idle(make_proxy: MakeProxy, origins: Origins) -> None:
    proxy = make_proxy([f"127.0.0.1:{origins.echo}"], tunnel_lifetime=30, idle_timeout=0.3)
    sock, _, _ = tunnel(proxy, f"127.0.0.1:{origins.echo}")
    with sock:
        assert echo_roundtrip(sock) == b"ping"
        started = time.monotonic()
        assert recv_all(sock) == b""
        assert 0.2 < time.monotonic() - started < 3
    (line,) = proxy.wait_records(1)
    assert "closed after 0.3 s idle" in line["reason"]


def test_a_silent_client_is_dropped_after_the_handshake_timeout(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(["api.test"], handshake_timeout=0.3)
    with proxy.connect() as sock:
        started = time.monotonic()
        assert recv_all(sock) == b""
        assert time.monotonic() - started < 3
    time.sleep(0.1)
    assert proxy.records() == []  # nothing was decided, nothing is audited


def test_two_endpoints_with_different_policies(make_proxy: MakeProxy, origins: Origins, tmp_path: Path) -> None:
    first = make_proxy([f"127.0.0.1:{origins.echo}"])
    second_endpoint = first.thread.open("other", tmp_path / "other.sock", Policy([f"127.0.0.1:{origins.source}"]))
    second = dataclasses.replace(first, endpoint=second_endpoint, path=tmp_path / "other.sock")
    a_echo, a_source = tunnel(first, f"127.0.0.1:{origins.echo}"), tunnel(first, f"127.0.0.1:{origins.source}")
    b_echo, b_source = tunnel(second, f"127.0.0.1:{origins.echo}"), tunnel(second, f"127.0.0.1:{origins.source}")
    for sock, _, _ in (a_echo, a_source, b_echo, b_source):
        sock.close()
    assert [a_echo[1], a_source[1], b_echo[1], b_source[1]] == [200, 403, 403, 200]
    assert [v.target for v in first.endpoint.violations()] == [f"127.0.0.1:{origins.source}"]
    assert [v.target for v in second.endpoint.violations()] == [f"127.0.0.1:{origins.echo}"]
    lines = first.wait_records(4)
    assert sorted((line["sandbox"], line["verdict"]) for line in lines) == [
        ("other", "allow"),
        ("other", "deny"),
        ("sb0", "allow"),
        ("sb0", "deny"),
    ]


def test_set_policy_widens_and_narrows_new_connections(make_proxy: MakeProxy, origins: Origins) -> None:
    proxy = make_proxy()
    target = f"127.0.0.1:{origins.echo}"
    assert tunnel_status(proxy, target) == 403
    proxy.endpoint.set_policy(Policy([target]))
    open_sock, status, _ = tunnel(proxy, target)
    assert status == 200
    proxy.endpoint.set_policy(Policy())
    assert tunnel_status(proxy, target) == 403
    with open_sock:  # a tunnel opened before narrowing keeps running
        assert echo_roundtrip(open_sock) == b"ping"
    assert [line["verdict"] for line in proxy.wait_records(3)] == ["deny", "deny", "allow"]
    with pytest.raises(UsageError, match=r"needs a corral\.egress\.Policy"):
        proxy.endpoint.set_policy(["example.com"])  # type: ignore[arg-type]


def test_every_decision_is_audited_and_the_log_verifies(make_proxy: MakeProxy, origins: Origins) -> None:
    proxy = make_proxy([f"127.0.0.1:{origins.echo}"])
    target = f"127.0.0.1:{origins.echo}"
    for n in range(10):
        sock, _, _ = tunnel(proxy, target if n % 2 else "denied.test:443")
        sock.close()
    lines = proxy.wait_records(10)
    assert sorted(line["verdict"] for line in lines) == ["allow"] * 5 + ["deny"] * 5
    assert verify(proxy.audit.path) == []
    assert len(proxy.endpoint.violations()) == 5


def test_200_concurrent_tunnels(make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    payload = os.urandom(64 << 10)

    handlers: set[asyncio.Task[Any]] = set()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            for _ in range(10_000):
                data = await reader.read(1 << 16)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def one(port: int) -> bytes:
        reader, writer = await asyncio.open_unix_connection(str(proxy.path))
        writer.write(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        writer.write(payload)
        data = await reader.readexactly(len(payload))
        writer.close()
        await writer.wait_closed()
        return data

    async def main() -> list[bytes | BaseException]:
        server = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=512)
        port = server.sockets[0].getsockname()[1]
        proxy.endpoint.set_policy(Policy([f"127.0.0.1:{port}"]))
        async with server, asyncio.timeout(60):
            results = await asyncio.gather(*(one(port) for _ in range(200)), return_exceptions=True)
            for _ in range(1000):  # the proxy passes each client's close on to its handler
                if len(handlers) == 200 and all(task.done() for task in handlers):
                    break
                await asyncio.sleep(0.01)
            return results

    results = asyncio.run(main())
    assert [r for r in results if r != payload] == []
    lines = proxy.wait_records(200)
    assert len(lines) == 200
    assert all(line["verdict"] == "allow" for line in lines)
    assert sum(line["bytes_up"] for line in lines) == 200 * len(payload)


def test_the_socket_is_private_to_its_owner(make_proxy: MakeProxy, tmp_path: Path) -> None:
    proxy = make_proxy()
    mode = proxy.path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    if os.geteuid() == 0:
        endpoint = proxy.thread.open("owned", tmp_path / "owned.sock", Policy(), owner_uid=4242)
        assert endpoint.socket_path.stat().st_uid == 4242
        assert stat.S_IMODE(endpoint.socket_path.stat().st_mode) == 0o600


def test_socket_paths_and_ids_are_checked(make_proxy: MakeProxy, tmp_path: Path) -> None:
    proxy = make_proxy()
    with pytest.raises(UsageError, match="already served by another proxy"):
        proxy.thread.open("again", proxy.path, Policy())
    with pytest.raises(UsageError, match="already has a proxy endpoint"):
        proxy.thread.open("sb0", tmp_path / "x.sock", Policy())
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="is not a socket"):
        proxy.thread.open("file", tmp_path / "file", Policy())
    with pytest.raises(UsageError, match="over the 107-byte limit"):
        proxy.thread.open("long", tmp_path / ("x" * 120), Policy())
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as leftover:
        leftover.bind(str(stale))
    proxy.thread.open("stale", stale, Policy())  # a socket nobody serves is replaced
    proxy.thread.close("stale")
    assert not stale.exists()


def test_closing_an_endpoint_ends_its_tunnels_and_audits_them(make_proxy: MakeProxy, origins: Origins) -> None:
    proxy = make_proxy([f"127.0.0.1:{origins.echo}"])
    sock, _status, _ = tunnel(proxy, f"127.0.0.1:{origins.echo}")
    with sock:
        assert echo_roundtrip(sock) == b"ping"
        proxy.thread.close("sb0")
        assert recv_all(sock) == b""
    assert not proxy.path.exists()
    (line,) = proxy.records()
    assert line["reason"].endswith("; closed by the proxy")
    assert line["bytes_up"] == 4


def test_connections_beyond_the_limit_are_closed(make_proxy: MakeProxy, origins: Origins) -> None:
    proxy = make_proxy([f"127.0.0.1:{origins.echo}"], max_connections=1)
    sock, status, _ = tunnel(proxy, f"127.0.0.1:{origins.echo}")
    with sock:
        assert status == 200
        with proxy.connect() as extra:
            assert recv_all(extra) == b""
        assert echo_roundtrip(sock) == b"ping"


def test_an_oversized_request_head_gets_400(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(["api.test"])
    head = "GET http://api.test/ HTTP/1.1\r\nHost: api.test\r\n" + "X-Pad: " + "a" * 70_000 + "\r\n\r\n"
    status, headers, _ = exchange(proxy, head.encode())
    assert status == 400
    assert "larger than 65536 bytes" in headers["x-corral-denied"]


def test_a_failing_resolver_makes_the_name_unreachable(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(["api.test"])

    async def broken(host: str, port: int) -> list[str]:
        raise ValueError("resolver exploded")

    proxy.thread.proxy.resolver = broken
    status, headers, _ = get(proxy, "http://api.test/", "api.test")
    assert status == 502
    assert headers["x-corral-error"] == "api.test could not be resolved (resolver exploded)"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_curl_through_a_socat_relay(make_proxy: MakeProxy, origins: Origins) -> None:
    curl, socat = require("curl"), require("socat")
    proxy = make_proxy([f"127.0.0.1:{origins.http}", f"api.test:{origins.http}"], names={"api.test": ["127.0.0.1"]})
    port = free_port()
    relay = subprocess.Popen(
        [socat, f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", f"UNIX-CONNECT:{proxy.path}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}

    def run(*args: str) -> tuple[str, str]:
        done = subprocess.run(
            [curl, "-sS", "-o", "-", "-w", "\n%{http_code}", *args], capture_output=True, text=True, env=env, timeout=20
        )
        body, _, code = done.stdout.rpartition("\n")
        return code, body

    try:
        wait_for(lambda: _can_connect(port))
        via = ["-x", f"http://127.0.0.1:{port}"]
        code, body = run(*via, f"http://127.0.0.1:{origins.http}/plain")
        assert code == "200"
        assert json.loads(body)["requestline"] == "GET /plain HTTP/1.1"
        code, body = run(*via, "-p", f"http://127.0.0.1:{origins.http}/tunnelled")
        assert code == "200"
        assert json.loads(body)["requestline"] == "GET /tunnelled HTTP/1.1"
        code, body = run("--socks5-hostname", f"127.0.0.1:{port}", f"http://api.test:{origins.http}/socks")
        assert code == "200"
        assert json.loads(body)["requestline"] == "GET /socks HTTP/1.1"
        code, body = run(*via, "http://denied.test/")
        assert code == "403"
        assert "denied.test:80 is not in the allowlist" in body
    finally:
        relay.terminate()
        relay.wait(5)
    assert len(proxy.wait_records(4)) == 4


def _can_connect(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0
