"""Helpers for tests of sandboxes bridged to the egress proxy: the proxy, and servers on 127.0.0.1.

A ``Bridge`` is one ``ProxyThread`` with an audit log and a table resolver. ``Bridge.door(policy)``
opens an endpoint whose socket the sandbox's relay can reach (under ``<runtime>/proxy``, as
``corral sandbox run`` puts it); leaving the ``with`` closes it, so its violations and audit
lines are final. Every dial the proxy makes goes through a guard that lets it connect to
127.0.0.1 only and records what it was asked: no test sends a packet anywhere else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import json
import os
import socketserver
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from corral.egress import proxy as proxy_module
from corral.egress import socks
from corral.egress.audit import AuditLog, verify
from corral.egress.door import Door as CorralDoor
from corral.egress.endpoint import Endpoint
from corral.egress.outbound import Unreachable
from corral.egress.policy import Policy
from corral.egress.proxy import ProxyConfig
from corral.egress.resolver import StaticResolver
from corral.egress.thread import ProxyThread
from corral.sandbox.spec import Violation
from corral.settings import Settings

TIMEOUT = 10.0


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout:g}s")
        time.sleep(0.01)


def relays() -> list[int]:
    """Relays (socat) this test process started and that are still running."""
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            comm, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
            if comm == "socat" and int(fields[1]) == os.getpid() and fields[0] != "Z":
                found.append(int(entry))
    return found


# -- servers on the host's 127.0.0.1


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


class _Origin(http.server.BaseHTTPRequestHandler):
    """Answers every GET and POST with ``origin <path>``; records each request line and headers."""

    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]]

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.seen.append({"requestline": self.requestline, "headers": dict(self.headers.items()), "body": body})
        data = f"origin {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(TIMEOUT)
        with contextlib.suppress(OSError):
            for _ in range(10_000):
                data = self.request.recv(65536)
                if not data:
                    break
                self.request.sendall(data)


class _Sink(socketserver.BaseRequestHandler):
    """Records every byte a connection sends (one entry per connection, added when it ends)."""

    received: list[bytes]
    connected: list[bool]

    def handle(self) -> None:
        self.connected.append(True)
        self.request.settimeout(TIMEOUT)
        data = b""
        with contextlib.suppress(OSError):
            for _ in range(10_000):
                chunk = self.request.recv(65536)
                if not chunk:
                    break
                data += chunk
        self.received.append(data)


@dataclasses.dataclass
class Origins:
    """What listens on the host's 127.0.0.1 for a test: two HTTP origins, an echo and a sink."""

    http: int
    seen: list[dict[str, Any]]
    other: int
    """A second HTTP origin (its requests are in ``seen`` too)."""
    echo: int
    sink: int
    sink_received: list[bytes]
    sink_connected: list[bool]


@contextlib.contextmanager
def serve_origins() -> Iterator[Origins]:
    seen: list[dict[str, Any]] = []
    received: list[bytes] = []
    connected: list[bool] = []
    origin = type("Origin", (_Origin,), {"seen": seen})
    sink = type("Sink", (_Sink,), {"received": received, "connected": connected})
    servers = [
        http.server.ThreadingHTTPServer(("127.0.0.1", 0), origin),
        http.server.ThreadingHTTPServer(("127.0.0.1", 0), origin),
        _Server(("127.0.0.1", 0), _Echo),
        _Server(("127.0.0.1", 0), sink),
    ]
    for server in servers:
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    ports = [int(server.server_address[1]) for server in servers]
    try:
        yield Origins(ports[0], seen, ports[1], ports[2], ports[3], received, connected)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


# -- the proxy


@dataclasses.dataclass
class Door:
    """One sandbox's endpoint: ``path`` goes into ``SandboxSpec.egress``."""

    id: str
    path: Path
    endpoint: Endpoint
    violations: tuple[Violation, ...] = ()
    """Final once the ``with`` that opened the door has ended."""


@dataclasses.dataclass
class Bridge:
    proxy: ProxyThread
    audit: AuditLog
    runtime: Path
    resolver: StaticResolver
    dialed: list[str]
    """Every address the proxy tried to dial, in order."""

    @contextlib.contextmanager
    def door(self, policy: Policy) -> Iterator[Door]:
        """An endpoint with ``policy`` for one sandbox; closed (connections ended and audited) on leaving."""
        name = f"t-{uuid.uuid4().hex[:12]}"
        with CorralDoor(self.runtime, policy, proxy=self.proxy, name=name) as opened:
            assert opened.endpoint is not None
            door = Door(name, opened.socket, opened.endpoint)
            try:
                yield door
            finally:
                opened.close()
                door.violations = door.endpoint.violations()

    def records(self, door: Door | None = None) -> list[dict[str, Any]]:
        """The audit lines so far (of one door's sandbox, if given)."""
        lines = [json.loads(line) for line in self.audit.path.read_text().splitlines()]
        return [line for line in lines if door is None or line["sandbox"] == door.id]

    def decisions(self, door: Door) -> list[tuple[str, str]]:
        """``(verdict, host:port)`` of each audit line of ``door``, in order."""
        return [(line["verdict"], f"{line['host']}:{line['port']}") for line in self.records(door)]


def _loopback_only(dial: Any, dialed: list[str]) -> Any:
    async def guarded(addresses: Sequence[str], port: int, timeout: float) -> Any:
        addresses = list(addresses)
        dialed.extend(addresses)
        if any(address != "127.0.0.1" for address in addresses):
            msg = f"the test guard does not dial {addresses} (only 127.0.0.1)"
            raise Unreachable(msg, socks.CONNECTION_REFUSED)
        return await dial(addresses, port, timeout)

    return guarded


@contextlib.contextmanager
def open_bridge(
    settings: Settings,
    audit_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    names: dict[str, list[str]] | None = None,
    **config: Any,
) -> Iterator[Bridge]:
    """A proxy thread for one test; on leaving, the audit log must verify as intact."""
    dialed: list[str] = []
    monkeypatch.setattr(proxy_module, "dial", _loopback_only(proxy_module.dial, dialed))
    resolver = StaticResolver(names or {})
    audit = AuditLog(audit_path)
    thread = ProxyThread(
        ProxyConfig(**{"handshake_timeout": 5.0, "linger": 0.5, **config}), audit=audit, resolver=resolver
    )
    try:
        yield Bridge(thread, audit, settings.runtime, resolver, dialed)
    finally:
        thread.stop()
        audit.close()
    assert verify(audit_path) == []
    assert thread.proxy.audit_failures == []


MakeBridge = Callable[..., "Bridge"]


@contextlib.contextmanager
def bridges(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, names: dict[str, list[str]]
) -> Iterator[MakeBridge]:
    """A factory of proxies (each with its own audit log), all closed at the end; ``names`` is the fake DNS."""
    from tests.tools import require, require_root

    require_root()
    require("socat")
    with contextlib.ExitStack() as stack:
        made: list[Bridge] = []

        def make(more_names: dict[str, list[str]] | None = None, **config: Any) -> Bridge:
            path = tmp_path / f"audit{len(made)}.jsonl"
            table = {**names, **(more_names or {})}
            made.append(stack.enter_context(open_bridge(settings, path, monkeypatch, table, **config)))
            return made[-1]

        yield make
