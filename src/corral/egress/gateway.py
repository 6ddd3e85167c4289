"""The API gateway: the one place a job's real Anthropic credential is used.

One ``Gateway`` per job listens on 127.0.0.1. The sandboxed CLI gets ``env()``: its
``ANTHROPIC_BASE_URL`` points here and its credential variable holds a random placeholder. The
gateway forwards ``POST /v1/messages`` and ``POST /v1/messages/count_tokens`` only when they carry
that placeholder (compared in constant time), swaps it for the real credential, and passes the
response back as it arrives, so SSE events are not held back. It answers ``HEAD /`` and ``GET /``
(the CLI's warm-up) itself and anything else with 404. Errors of its own have the Messages
API's JSON shape: 401 without the placeholder, 411 for a chunked body (the CLI sends
``Content-Length``), 413 past ``MAX_BODY``, 502 when the upstream cannot be reached.

Token usage is metered from the responses (``message_start`` and the cumulative
``message_delta`` of each SSE message, or the ``usage`` of a JSON message). To read them the
gateway asks the upstream for ``Accept-Encoding: identity``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import secrets
from collections.abc import AsyncIterator, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from corral.egress.http import BadRequest, Request, parse_request
from corral.egress.policy import format_target
from corral.errors import UsageError
from corral.jobs.models import Usage
from corral.secrets import Credential, Secret

if TYPE_CHECKING:
    import httpx

__all__ = [
    "MAX_BODY",
    "Gateway",
    "SSEUsage",
    "authorized",
    "downstream_headers",
    "json_usage",
    "parse_head",
    "upstream_headers",
]

MAX_BODY = 32 << 20
"""The largest request body the gateway forwards, in bytes."""
READ_TIMEOUT = 600.0
"""Seconds the upstream may stay silent within a response (the agent's idle limit)."""
MAX_HEAD = 64 * 1024
_ROUTES = {"/v1/messages", "/v1/messages/count_tokens"}
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer"}
    | {"transfer-encoding", "upgrade", "expect"}
)
_DROPPED = _HOP_BY_HOP | {"host", "x-api-key", "authorization", "accept-encoding"}
_USAGE_FIELDS = tuple(field.name for field in dataclasses.fields(Usage))
_HOST = re.compile(rb"\r\nhost:[ \t]*([^\r]*)", re.IGNORECASE)
Headers = Iterable[tuple[str, str]]


def parse_head(head: bytes) -> Request:
    """``parse_request`` for origin-form targets too (``POST /v1/messages``, the Host header names the authority)."""
    line, _, rest = head.partition(b"\r\n")
    method, _, target = line.partition(b" ")
    if target.startswith(b"/"):
        host = _HOST.search(b"\r\n" + rest)
        line = method + b" http://" + (host.group(1).strip() if host else b"127.0.0.1") + target
    return parse_request(line + b"\r\n" + rest)


def _connection_tokens(headers: Headers) -> set[str]:
    return {t.strip().lower() for name, value in headers if name.lower() == "connection" for t in value.split(",")}


def _end_to_end(headers: Headers, dropped: frozenset[str]) -> list[tuple[str, str]]:
    headers = list(headers)
    dropped |= _connection_tokens(headers)
    return [(name, value) for name, value in headers if name.lower() not in dropped]


def authorized(headers: Headers, placeholder: Secret) -> bool:
    """Whether the request presents a credential and every one it presents is ``placeholder``."""
    presented = []
    for name, value in headers:
        if name.lower() == "x-api-key":
            presented.append(value)
        elif name.lower() == "authorization":
            scheme, _, token = value.partition(" ")
            presented.append(token.strip() if scheme.lower() == "bearer" else "")
    return bool(presented) and all(Secret(value) == placeholder for value in presented)


def upstream_headers(headers: Headers, credential: tuple[str, str]) -> list[tuple[str, str]]:
    """The end-to-end headers of the request, with the placeholder swapped for ``credential``."""
    return [*_end_to_end(headers, _DROPPED), credential, ("accept-encoding", "identity")]


def downstream_headers(headers: Headers) -> list[tuple[str, str]]:
    """The end-to-end headers of the upstream response (the framing is the gateway's own)."""
    return _end_to_end(headers, _HOP_BY_HOP)


def _usage_of(data: Any) -> dict[str, int]:
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if k in _USAGE_FIELDS and isinstance(v, int) and not isinstance(v, bool)}


def json_usage(body: bytes) -> Usage:
    """The ``usage`` of a non-streaming Messages API response; zero when the body has none."""
    try:
        data = json.loads(body)
    except ValueError:
        return Usage()
    return Usage(**_usage_of(data.get("usage") if isinstance(data, dict) else None))


class SSEUsage:
    """The usage of an SSE response, fed with chunks that may split lines and events anywhere.

    Each message counts its ``message_start`` usage, overwritten field by field by the
    cumulative usage of its ``message_delta`` events.
    """

    def __init__(self) -> None:
        self._pending = bytearray()
        self._data: list[bytes] = []
        self._done = Usage()
        self._current: dict[str, int] = {}

    @property
    def usage(self) -> Usage:
        return self._done + Usage(**self._current)

    def feed(self, chunk: bytes) -> None:
        self._pending += chunk
        start = 0
        while (end := self._pending.find(b"\n", start)) >= 0:
            self._line(bytes(self._pending[start:end]).rstrip(b"\r"))
            start = end + 1
        del self._pending[:start]

    def _line(self, line: bytes) -> None:
        if line.startswith(b"data:"):
            self._data.append(line[5:].removeprefix(b" "))
        elif not line and self._data:
            data, self._data = b"\n".join(self._data), []
            if b'"message_start"' in data or b'"message_delta"' in data:
                self._event(data)

    def _event(self, data: bytes) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            return
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "message_start":
            self._done, self._current = self.usage, _usage_of((event.get("message") or {}).get("usage"))
        elif kind == "message_delta":
            self._current.update(_usage_of(event.get("usage")))


def _error(status: int, kind: str, message: str) -> bytes:
    """A complete error response in the Messages API's shape; the connection closes after it."""
    body = json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
    head = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
    return f"{head}content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body


class Gateway:
    """The per-job gateway to ``upstream``; ``async with`` it, or ``start()`` then ``aclose()``."""

    def __init__(self, upstream: str, credential: Credential, *, placeholder: Secret | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.credential = credential
        self.placeholder = placeholder or Secret("corral-placeholder-" + secrets.token_urlsafe(24))
        self.requests = 0
        """Requests forwarded to the upstream."""
        self._usage = Usage()
        self._meters: set[SSEUsage] = set()
        self._server: asyncio.Server | None = None
        self._client: httpx.AsyncClient | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def usage(self) -> Usage:
        """The tokens of every response so far, responses still streaming included (readable from any thread)."""
        return sum((meter.usage for meter in tuple(self._meters)), self._usage)

    @property
    def url(self) -> str:
        if self._server is None:
            msg = "The gateway has no URL before it starts; await gateway.start() first."
            raise UsageError(msg)
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{format_target(host, port)}"

    def env(self) -> dict[str, str]:
        """The environment the sandboxed CLI gets: this gateway as its API, the placeholder as its credential."""
        return {"ANTHROPIC_BASE_URL": self.url, self.credential.env_name: self.placeholder.reveal()}

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        import httpx

        timeout = httpx.Timeout(connect=10.0, read=READ_TIMEOUT, write=60.0, pool=10.0)
        self._client = httpx.AsyncClient(timeout=timeout, trust_env=False, follow_redirects=False)
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self._client is not None:
            await self._client.aclose()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while await self._exchange(reader, writer):
                pass
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client left, or aclose() ended the exchange
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; ``True`` when the connection stays open for the next."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as err:
            if err.partial:
                raise
            return False
        except asyncio.LimitOverrunError:
            writer.write(_error(400, "invalid_request_error", f"corral gateway: the head is over {MAX_HEAD} bytes."))
            return False
        try:
            request = parse_head(head)
        except BadRequest as err:
            writer.write(_error(err.status, "invalid_request_error", f"corral gateway: {err.reason}."))
            return False
        tokens = _connection_tokens(request.headers)
        keep = "close" not in tokens and (request.version == "HTTP/1.1" or "keep-alive" in tokens)
        path = request.path.partition("?")[0]
        if request.method in ("HEAD", "GET") and path == "/":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n\r\n")
            writer.write(b"" if request.method == "HEAD" else b"ok\n")
            return keep and not request.content_length and not request.chunked
        refusal = _refusal(request, path, self.placeholder)
        if refusal is not None:
            writer.write(_error(*refusal))
            return False
        if any(name.lower() == "expect" and value.lower() == "100-continue" for name, value in request.headers):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return await self._forward(request, path, reader, writer) and keep

    async def _forward(
        self, request: Request, path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        import httpx

        assert self._client is not None
        length = request.content_length or 0

        async def body() -> AsyncIterator[bytes]:
            left = length
            while left:
                chunk = await reader.read(min(left, 1 << 16))
                if not chunk:
                    msg = "the client closed the connection before the end of its request body"
                    raise ConnectionError(msg)
                left -= len(chunk)
                yield chunk

        rewritten = upstream_headers(request.headers, self.credential.header())
        headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in rewritten]
        url = self.upstream + request.path
        outgoing = httpx.Request(request.method, url, headers=headers, content=body() if length else b"")
        self.requests += 1
        try:
            response = await self._client.send(outgoing, stream=True)
        except httpx.HTTPError as err:
            why = f"corral gateway: the upstream {self.upstream} cannot be reached ({type(err).__name__})."
            writer.write(_error(502, "api_error", why))
            return False
        try:
            return await self._relay(response, path, writer)
        finally:
            await response.aclose()

    async def _relay(self, response: httpx.Response, path: str, writer: asyncio.StreamWriter) -> bool:
        """Pass ``response`` on as it arrives, metering it; ``True`` when it ended cleanly."""
        import httpx

        chunked = "content-length" not in response.headers
        raw = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in response.headers.raw]
        head = f"HTTP/1.1 {response.status_code} {response.reason_phrase}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in downstream_headers(raw))
        writer.write((head + ("transfer-encoding: chunked\r\n" if chunked else "") + "\r\n").encode("latin-1"))
        await writer.drain()
        kind = response.headers.get("content-type", "") if response.is_success and path == "/v1/messages" else ""
        meter = SSEUsage() if kind.startswith("text/event-stream") else None
        collected = bytearray() if kind.startswith("application/json") else None
        if meter is not None:
            self._meters.add(meter)
        try:
            async for chunk in response.aiter_raw():
                if meter is not None:
                    meter.feed(chunk)
                elif collected is not None and len(collected) <= MAX_BODY:
                    collected += chunk
                if chunk:
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                    await writer.drain()
            if chunked:
                writer.write(b"0\r\n\r\n")
        except httpx.HTTPError:
            return False  # the upstream broke off: closing tells the client the response is cut
        finally:
            if meter is not None:
                self._meters.discard(meter)
                self._usage += meter.usage
            elif collected:
                self._usage += json_usage(bytes(collected))
        return True


def _refusal(request: Request, path: str, placeholder: Secret) -> tuple[int, str, str] | None:
    """Why the gateway answers ``request`` itself instead of forwarding it, or ``None``."""
    if request.method != "POST" or path not in _ROUTES:
        return 404, "not_found_error", f"corral gateway: {request.method} {path} is not served here."
    if not authorized(request.headers, placeholder):
        return 401, "authentication_error", "corral gateway: the request does not carry this job's credential."
    if request.chunked:
        return 411, "invalid_request_error", "corral gateway: send the request body with a Content-Length."
    if (request.content_length or 0) > MAX_BODY:
        return 413, "request_too_large", f"corral gateway: the request body is larger than {MAX_BODY} bytes."
    return None
