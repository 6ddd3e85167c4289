"""The egress proxy: one Unix-socket listener per sandbox, speaking SOCKS5 and HTTP on each.

The first byte picks the protocol: ``0x05`` is SOCKS5, anything else HTTP (``CONNECT`` tunnels
and absolute-URI requests). Every connection then goes the same way:

1. the target's *name* is decided by the endpoint's policy, before any DNS;
2. an allowed name is resolved once, every address is vetted, and the vetted address is
   dialed (``outbound``);
3. a tunnel to a TLS port must open with a ClientHello whose SNI is the allowed name;
4. bytes are moved until both sides close, the tunnel goes idle, or its lifetime ends.

Refusals are explicit (HTTP 403 with ``X-Corral-Denied``, 400 for malformed requests, SOCKS
reply 2), each is recorded as a ``Violation`` on the endpoint, and every decision is one line in
the audit log, written when the connection ends so that it carries the bytes and the duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as _dt
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

from corral.egress import socks
from corral.egress.audit import AuditLog, AuditRecord
from corral.egress.connection import Side, Tunnel
from corral.egress.endpoint import Endpoint, bind_socket
from corral.egress.http import (
    MAX_HEAD,
    BadRequest,
    BodyLimit,
    ChunkedBody,
    LengthBody,
    error_response,
    find_head_end,
    parse_request,
    upstream_head,
)
from corral.egress.interfaces import CachedAddresses
from corral.egress.outbound import Refused, Unreachable, admit, dial
from corral.egress.policy import IPAddress, Policy, canonical_host, format_target
from corral.egress.resolver import Resolver, system_resolver
from corral.egress.tls import ALERT_UNRECOGNIZED_NAME, MAX_HELLO, NotClientHello, client_hello_sni
from corral.errors import AuditLogError, BadLimitError, UsageError
from corral.sandbox.spec import Violation

__all__ = ["DECISIONS", "DecisionCounter", "EgressProxy", "ProxyConfig"]

T = TypeVar("T")
_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


class DecisionCounter:
    """Egress decisions by verdict (``allow``, ``deny``) in this process; ``corral.api.metrics`` reads it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = {"allow": 0, "deny": 0}

    def add(self, verdict: str) -> None:
        with self._lock:
            self._counts[verdict] = self._counts.get(verdict, 0) + 1

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


DECISIONS = DecisionCounter()
"""Every decision of every proxy in this process, audited or not."""


@dataclasses.dataclass(frozen=True)
class ProxyConfig:
    """Limits of one proxy, in seconds; the same for all its endpoints."""

    tunnel_lifetime: float = 3600.0
    idle_timeout: float = 300.0
    handshake_timeout: float = 10.0
    """For the client to send its request, and the ClientHello of a TLS tunnel."""
    connect_timeout: float = 10.0
    """For resolving an allowed name, and again for connecting to it."""
    linger: float = 2.0
    """How long a refused client may take to read the refusal before the socket is closed."""
    tls_ports: frozenset[int] = frozenset({443})
    """Tunnels to these ports must start with a ClientHello naming the allowed host."""
    max_connections: int = 1024
    """Connections served at once per endpoint; more are closed at once."""

    def __post_init__(self) -> None:
        for name in ("tunnel_lifetime", "idle_timeout", "handshake_timeout", "connect_timeout", "linger"):
            value = getattr(self, name)
            if not value > 0:
                msg = f"The proxy's {name} is {value!r}; it must be a positive number of seconds."
                raise BadLimitError(msg)
        if self.max_connections < 1:
            msg = f"The proxy's max_connections is {self.max_connections}; it must be at least 1."
            raise BadLimitError(msg)


@dataclasses.dataclass
class _Attempt:
    """What is known about one client connection so far; becomes one audit line."""

    endpoint: Endpoint
    started: float
    when: _dt.datetime
    host: str = ""
    port: int = 0
    verdict: Literal["allow", "deny"] | None = None
    rule: str | None = None
    reason: str = ""
    address: str | None = None
    up: int = 0
    down: int = 0
    upstream: socket.socket | None = None
    """Owned here from the moment it is dialed, so that it is closed whatever happens next."""

    @property
    def target(self) -> str:
        return format_target(self.host, self.port) if self.host else "an unknown target"


class EgressProxy:
    """The async core; run it on one event loop (``ProxyThread`` does that for synchronous callers)."""

    def __init__(
        self,
        config: ProxyConfig | None = None,
        *,
        audit: AuditLog | None = None,
        resolver: Resolver | None = None,
        local_addresses: Callable[[], frozenset[IPAddress]] | None = None,
    ) -> None:
        self.config = config or ProxyConfig()
        self.audit = audit
        self.resolver = resolver or system_resolver
        self.local_addresses = local_addresses or CachedAddresses()
        self.audit_failures: list[str] = []
        """Why audit lines could not be written (the connections went on)."""
        self._endpoints: dict[str, Endpoint] = {}

    # -- endpoints

    async def open(
        self, sandbox_id: str, socket_path: Path | str, policy: Policy, *, owner_uid: int | None = None
    ) -> Endpoint:
        """Listen for ``sandbox_id`` at ``socket_path`` (mode 0600, chowned to ``owner_uid``)."""
        if sandbox_id in self._endpoints:
            msg = f"The sandbox {sandbox_id!r} already has a proxy endpoint; close it first or use another id."
            raise UsageError(msg)
        path = Path(socket_path)
        endpoint = Endpoint(sandbox_id, path, policy)
        endpoint.listener = bind_socket(path, owner_uid)
        endpoint.inode = path.stat().st_ino
        endpoint.listener.listen(1024)
        endpoint.accepting = asyncio.get_running_loop().create_task(self._accept(endpoint))
        self._endpoints[sandbox_id] = endpoint
        return endpoint

    def endpoint(self, sandbox_id: str) -> Endpoint:
        try:
            return self._endpoints[sandbox_id]
        except KeyError:
            msg = f"No proxy endpoint is open for the sandbox {sandbox_id!r}; open one first."
            raise UsageError(msg) from None

    async def close(self, sandbox_id: str, grace: float = 5.0) -> None:
        """Stop listening for ``sandbox_id``, end its connections (they are audited) and remove its socket."""
        endpoint = self._endpoints.pop(sandbox_id, None)
        if endpoint is None:
            return
        tasks = [task for task in (endpoint.accepting, *endpoint.tasks) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        if endpoint.listener is not None:
            endpoint.listener.close()
        with contextlib.suppress(FileNotFoundError):
            if endpoint.socket_path.stat().st_ino == endpoint.inode:
                endpoint.socket_path.unlink()

    async def aclose(self) -> None:
        """Close every endpoint."""
        for sandbox_id in list(self._endpoints):
            await self.close(sandbox_id)

    async def __aenter__(self) -> EgressProxy:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _accept(self, endpoint: Endpoint) -> None:
        """Accept connections until the endpoint is closed (this task is cancelled)."""
        loop = asyncio.get_running_loop()
        assert endpoint.listener is not None
        while True:
            try:
                sock, _ = await loop.sock_accept(endpoint.listener)
            except OSError:  # out of file descriptors, most likely: let some connections end
                await asyncio.sleep(0.05)
                continue
            if len(endpoint.tasks) >= self.config.max_connections:
                sock.close()
                continue
            task = loop.create_task(self._serve(endpoint, sock))
            endpoint.tasks.add(task)
            task.add_done_callback(endpoint.tasks.discard)

    # -- one connection

    async def _serve(self, endpoint: Endpoint, sock: socket.socket) -> None:
        attempt = _Attempt(endpoint, asyncio.get_running_loop().time(), _dt.datetime.now(_dt.UTC))
        client = Side(sock)
        try:
            first = await self._receive(client, lambda data: data[:1] or None, 1)
            if first == b"\x05":
                await self._socks(attempt, client)
            else:
                await self._http(attempt, client)
        except (TimeoutError, OSError):
            pass  # the client left or stalled before its request was complete
        except Exception as err:  # a bug: keep it in the audit line rather than lose it in the loop
            attempt.verdict = attempt.verdict or "deny"
            attempt.reason = f"{attempt.reason}; proxy error: {err!r}".lstrip("; ")
        finally:
            sock.close()
            if attempt.upstream is not None:
                attempt.upstream.close()
            self._audit(attempt)

    async def _receive(self, side: Side, parse: Callable[[bytearray], T | None], limit: int) -> T:
        """Read until ``parse`` finds a complete message; ``ConnectionError`` if the client ends first."""
        async with asyncio.timeout(self.config.handshake_timeout):
            while True:
                result = parse(side.buffer)
                if result is not None:
                    return result
                if len(side.buffer) > limit or not await side.read_more():
                    msg = "the client ended its request early, or sent one too large"
                    raise ConnectionError(msg)

    async def _http(self, attempt: _Attempt, client: Side) -> None:
        try:
            size = await self._receive(client, find_head_end, MAX_HEAD)
            request = parse_request(client.take(size))
        except BadRequest as err:
            attempt.host, attempt.port = err.host, err.port
            await self._refuse(attempt, client, err.reason, error_response(err.status, err.reason))
            return
        attempt.host, attempt.port = request.host, request.port
        upstream = await self._connect(
            attempt, client, lambda why: error_response(403, why), http=True, tunnel=request.is_connect
        )
        if upstream is None:
            return
        if request.is_connect:
            await client.send(_ESTABLISHED)
            if not await self._sni_refused(attempt, client):
                await self._tunnel(attempt, client, upstream)
            return
        limit: BodyLimit = ChunkedBody() if request.chunked else LengthBody(request.content_length or 0)
        await self._tunnel(attempt, client, upstream, limit, upstream_head(request))

    async def _socks(self, attempt: _Attempt, client: Side) -> None:
        try:
            greeting = await self._receive(client, socks.parse_greeting, 2 + 255)
            client.take(greeting.size)
            await client.send(socks.choose_method(greeting))
            if socks.NO_AUTH not in greeting.methods:
                await self._refuse(attempt, client, "the SOCKS client offers no 'no authentication' method", b"")
                return
            request = await self._receive(client, socks.parse_request, 4 + 1 + 255 + 2)
        except socks.SocksError as err:
            await self._refuse(attempt, client, err.reason, socks.reply(err.code))
            return
        client.take(request.size)
        attempt.host, attempt.port = request.host, request.port
        upstream = await self._connect(
            attempt, client, lambda _: socks.reply(socks.NOT_ALLOWED), http=False, tunnel=True
        )
        if upstream is None:
            return
        await client.send(socks.reply(socks.SUCCEEDED))
        if not await self._sni_refused(attempt, client):
            await self._tunnel(attempt, client, upstream)

    async def _connect(
        self, attempt: _Attempt, client: Side, refusal: Callable[[str], bytes], *, http: bool, tunnel: bool
    ) -> socket.socket | None:
        """Decide, resolve, vet and dial; answer the client and return ``None`` when any of it fails."""
        timeout = self.config.connect_timeout
        try:
            admitted = await admit(
                attempt.host,
                attempt.port,
                attempt.endpoint.policy,
                resolver=self.resolver,
                own_addresses=self.local_addresses(),
                timeout=timeout,
                tunnel_ports=self.config.tls_ports if tunnel else None,
            )
            attempt.verdict, attempt.rule, attempt.reason = "allow", admitted.decision.rule, admitted.decision.reason
            attempt.upstream, attempt.address = await dial(admitted.addresses, attempt.port, timeout)
            return attempt.upstream
        except Refused as err:
            attempt.rule, attempt.address = err.rule, err.address
            await self._refuse(attempt, client, err.reason, refusal(err.reason))
        except Unreachable as err:
            if err.decision is not None:
                attempt.verdict, attempt.rule = "allow", err.decision.rule
            attempt.reason = err.reason
            answer = error_response(502, err.reason, "X-Corral-Error") if http else socks.reply(err.code)
            await client.finish(answer, self.config.linger)
        return None

    async def _sni_refused(self, attempt: _Attempt, client: Side) -> bool:
        """For a TLS port: refuse (and close) unless the ClientHello names the allowed host."""
        if attempt.port not in self.config.tls_ports:
            return False
        expected = canonical_host(attempt.host)
        reason = None
        try:
            hello = await self._receive(client, client_hello_sni, MAX_HELLO + 4096)
        except NotClientHello as err:
            reason = f"the tunnel to {attempt.target} does not start with a TLS ClientHello ({err})"
        except (TimeoutError, ConnectionError):
            reason = f"the tunnel to {attempt.target} sent no complete TLS ClientHello"
        else:
            if hello.sni is None and isinstance(expected, str):
                reason = f"the ClientHello to {attempt.target} names no server (SNI); send the host name"
            elif hello.sni is not None and canonical_host(hello.sni) != expected:
                reason = f"the ClientHello names {hello.sni!r}, not {attempt.host}: domain fronting is refused"
        if reason is None:
            return False
        attempt.rule = None
        await self._refuse(attempt, client, reason, ALERT_UNRECOGNIZED_NAME)
        return True

    async def _tunnel(
        self,
        attempt: _Attempt,
        client: Side,
        upstream: socket.socket,
        limit: BodyLimit | None = None,
        head: bytes = b"",
    ) -> None:
        """Pass on what the client sent already (after ``head``), then move bytes both ways until the end."""
        config = self.config
        early = client.take(len(client.buffer))
        if limit is not None:
            try:
                early = early[: limit.feed(early)]
            except BadRequest as err:
                attempt.reason += f"; {err.reason}"
                return
        if head or early:
            async with asyncio.timeout(config.connect_timeout):
                await asyncio.get_running_loop().sock_sendall(upstream, head + early)
            attempt.up += len(head) + len(early)
        tunnel = Tunnel(
            client.sock, upstream, idle=config.idle_timeout, deadline=attempt.started + config.tunnel_lifetime
        )
        tunnel.start(limit)
        try:
            ended_by = await tunnel.done
        except asyncio.CancelledError:
            attempt.reason += "; closed by the proxy"
            raise
        finally:
            tunnel.end("closed by the proxy")
            attempt.up += tunnel.up
            attempt.down += tunnel.down
        if ended_by == "idle":
            attempt.reason += f"; closed after {config.idle_timeout:g} s idle"
        elif ended_by == "lifetime":
            attempt.reason += f"; closed at the {config.tunnel_lifetime:g} s tunnel lifetime"
        elif ended_by != "closed":
            attempt.reason += f"; {ended_by}"

    async def _refuse(self, attempt: _Attempt, client: Side, reason: str, answer: bytes) -> None:
        attempt.verdict, attempt.reason = "deny", reason
        attempt.endpoint.record(Violation(kind="network", target=attempt.target, detail=reason))
        await client.finish(answer, self.config.linger)

    def _audit(self, attempt: _Attempt) -> None:
        if attempt.verdict is not None:
            DECISIONS.add(attempt.verdict)
        if self.audit is None or attempt.verdict is None:
            return
        record = AuditRecord(
            sandbox=attempt.endpoint.sandbox_id,
            host=attempt.host[:300],
            port=attempt.port,
            verdict=attempt.verdict,
            reason=attempt.reason[:1000],
            rule=attempt.rule,
            address=attempt.address,
            bytes_up=attempt.up,
            bytes_down=attempt.down,
            duration=asyncio.get_running_loop().time() - attempt.started,
            time=attempt.when,
        )
        try:
            self.audit.append(record)
        except AuditLogError as err:
            self.audit_failures.append(str(err))
