"""HTTP/1.x requests as the proxy reads them: strict parsing, the upstream rewrite, the refusals.

Pure functions over bytes. The parser is strict on purpose, because a request that the proxy
and the origin frame differently is a request the proxy did not really check: two
``Content-Length`` headers, ``Content-Length`` with ``Transfer-Encoding``, a ``Transfer-Encoding``
other than ``chunked``, obs-fold continuation lines, bare CR or LF, and header names that are not
tokens are all refused with a 400. A ``Host`` header that disagrees with the absolute URI is
refused with a 403: the origin might route by it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Protocol

from corral.egress.policy import canonical_host

__all__ = [
    "MAX_HEAD",
    "BadRequest",
    "BodyLimit",
    "ChunkedBody",
    "LengthBody",
    "Request",
    "error_response",
    "find_head_end",
    "parse_request",
    "split_authority",
    "upstream_head",
]

MAX_HEAD = 64 * 1024
MAX_HEADERS = 100
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_PORT = re.compile(r"[0-9]{1,5}")
_HOP_BY_HOP = frozenset(
    {"connection", "proxy-connection", "keep-alive", "proxy-authorization", "proxy-authenticate", "te", "upgrade"}
)
_PHRASES = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway", 503: "Service Unavailable"}


class BadRequest(Exception):
    """A request the proxy refuses to pass on: ``status`` 400 when malformed, 403 when refused."""

    def __init__(self, reason: str, status: int = 400, host: str = "", port: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.host = host
        """The target, when the request got far enough to name one."""
        self.port = port


@dataclasses.dataclass(frozen=True)
class Request:
    """One parsed request head. ``host`` keeps IPv6 brackets; ``path`` is the origin-form target."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    host: str
    port: int
    path: str = ""
    content_length: int | None = None
    chunked: bool = False

    @property
    def is_connect(self) -> bool:
        return self.method == "CONNECT"


def find_head_end(buffer: bytes | bytearray, limit: int = MAX_HEAD) -> int | None:
    """The length of the head (through the blank line), ``None`` while it is incomplete.

    Raises ``BadRequest`` once the head is, or will be, longer than ``limit`` bytes.
    """
    end = buffer.find(b"\r\n\r\n", 0, limit)
    if end < 0 and len(buffer) >= limit:
        msg = f"the request head is larger than {limit} bytes"
        raise BadRequest(msg)
    return None if end < 0 else end + 4


def split_authority(text: str, default_port: int | None) -> tuple[str, int]:
    """``host`` and ``port`` of ``host[:port]`` or ``[v6][:port]``; the host keeps its brackets."""
    if text.startswith("["):
        close = text.find("]")
        host, rest = text[: close + 1], text[close + 1 :] if close > 0 else "?"
    else:
        host, _, port_text = text.rpartition(":")
        host, rest = (host, ":" + port_text) if host else (text, "")
    if not host or "@" in host or "\\" in host:
        msg = f"the authority {text!r} is not host[:port]"
        raise BadRequest(msg)
    if not rest:
        if default_port is None:
            msg = f"the authority {text!r} has no port; write host:port"
            raise BadRequest(msg)
        return host, default_port
    if not rest.startswith(":") or not _PORT.fullmatch(rest[1:]) or not 1 <= int(rest[1:]) <= 65535:
        msg = f"the authority {text!r} has no valid port (1-65535)"
        raise BadRequest(msg)
    return host, int(rest[1:])


def _headers(lines: list[str]) -> list[tuple[str, str]]:
    if len(lines) > MAX_HEADERS:
        msg = f"the request has {len(lines)} header lines, more than {MAX_HEADERS}"
        raise BadRequest(msg)
    headers = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            msg = "the request folds a header over several lines (obs-fold), which is not allowed"
            raise BadRequest(msg)
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            msg = f"the header line {line[:60]!r} is not 'Name: value'"
            raise BadRequest(msg)
        value = value.strip(" \t")
        if _BAD_VALUE.search(value):
            msg = f"the header {name} has a control character in its value"
            raise BadRequest(msg)
        headers.append((name, value))
    return headers


def _only(headers: list[tuple[str, str]], name: str) -> str | None:
    values = [value for key, value in headers if key.lower() == name]
    if len(values) > 1:
        msg = f"the request has {len(values)} {name} headers; send one"
        raise BadRequest(msg)
    return values[0] if values else None


def _absolute(target: str) -> tuple[str, str]:
    """The authority and origin-form path of an absolute ``http://`` URI."""
    scheme, sep, rest = target.partition("://")
    if not sep or "/" in scheme:
        msg = (
            f"the request target {target[:80]!r} is not an absolute http:// URI; configure the client to use the proxy"
        )
        raise BadRequest(msg)
    if scheme.lower() != "http":
        msg = f"the scheme {scheme!r} cannot be proxied as plain HTTP; use CONNECT (https_proxy) for TLS"
        raise BadRequest(msg)
    if "#" in rest:
        msg = "the request target has a fragment (#), which clients must not send"
        raise BadRequest(msg)
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    path = rest[cut:]
    return rest[:cut], path if path.startswith("/") else "/" + path


def parse_request(head: bytes) -> Request:
    """Parse a complete head (ending in a blank line); raise ``BadRequest`` when it must be refused."""
    if not head.endswith(b"\r\n\r\n"):
        msg = "the request head does not end with a blank line"
        raise BadRequest(msg)
    text = head[:-4].decode("latin-1")
    joined = text.replace("\r\n", "")
    if "\r" in joined or "\n" in joined:
        msg = "the request has a bare CR or LF; lines must end with CRLF"
        raise BadRequest(msg)
    request_line, *header_lines = text.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        msg = f"the request line {request_line[:80]!r} is not 'METHOD target HTTP/1.1'"
        raise BadRequest(msg)
    method, target, version = parts
    if not target.isascii() or not target.isprintable():
        msg = "the request target has characters outside printable ASCII"
        raise BadRequest(msg)
    headers = _headers(header_lines)
    length_text = _only(headers, "content-length")
    encoding = _only(headers, "transfer-encoding")
    host_header = _only(headers, "host")
    if length_text is not None and encoding is not None:
        msg = "the request has both Content-Length and Transfer-Encoding"
        raise BadRequest(msg)
    if length_text is not None and not (length_text.isdigit() and length_text.isascii() and len(length_text) <= 15):
        msg = f"the Content-Length {length_text[:40]!r} is not a number"
        raise BadRequest(msg)
    if encoding is not None and (encoding.lower() != "chunked" or version == "HTTP/1.0"):
        msg = f"the Transfer-Encoding {encoding[:40]!r} is not supported; send chunked (HTTP/1.1) or Content-Length"
        raise BadRequest(msg)
    if method == "CONNECT":
        if length_text not in (None, "0") or encoding is not None:
            msg = "a CONNECT request has a body"
            raise BadRequest(msg)
        host, port = split_authority(target, None)
        return Request(method, target, version, tuple(headers), host, port)
    authority, path = _absolute(target)
    host, port = split_authority(authority, 80)
    if host_header is None and version == "HTTP/1.1":
        msg = "the HTTP/1.1 request has no Host header"
        raise BadRequest(msg)
    if host_header is not None and canonical_host(host) is not None:
        try:
            named = split_authority(host_header, 80)
        except BadRequest:
            named = (host_header, -1)
        if canonical_host(named[0]) != canonical_host(host) or named[1] != port:
            msg = f"the Host header {host_header[:80]!r} disagrees with the URL authority {authority[:80]!r}"
            raise BadRequest(msg, 403, host, port)
    length = None if length_text is None else int(length_text)
    return Request(method, target, version, tuple(headers), host, port, path, length, encoding is not None)


def upstream_head(request: Request) -> bytes:
    """The head sent to the origin: origin-form target, hop-by-hop headers dropped, ``Connection: close``."""
    named = {
        token.strip().lower()
        for name, value in request.headers
        if name.lower() in ("connection", "proxy-connection")
        for token in value.split(",")
    }
    lines = [f"{request.method} {request.path} {request.version}"]
    if not any(name.lower() == "host" for name, _ in request.headers):
        lines.append(f"Host: {request.host}" + ("" if request.port == 80 else f":{request.port}"))
    lines += [f"{name}: {value}" for name, value in request.headers if name.lower() not in _HOP_BY_HOP | named]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def header_safe(text: str, limit: int = 300) -> str:
    """``text`` fit for a header value: printable ASCII only, at most ``limit`` characters."""
    safe = "".join(c if " " <= c <= "~" else "?" for c in text)
    return safe if len(safe) <= limit else safe[: limit - 3] + "..."


def error_response(status: int, reason: str, header: str = "X-Corral-Denied") -> bytes:
    """A complete ``Connection: close`` response naming ``reason`` in ``header`` and in the body."""
    safe = header_safe(reason)
    body = f"corral egress proxy: {safe}\n".encode()
    head = (
        f"HTTP/1.1 {status} {_PHRASES.get(status, 'Error')}\r\n{header}: {safe}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class BodyLimit(Protocol):
    """Finds where a request body ends in the bytes that follow its head."""

    done: bool

    def feed(self, data: bytes | memoryview) -> int:
        """How many leading bytes of ``data`` still belong to the body; raise ``BadRequest`` if malformed."""
        ...


class LengthBody:
    def __init__(self, length: int) -> None:
        self.remaining = length
        self.done = length == 0

    def feed(self, data: bytes | memoryview) -> int:
        take = min(self.remaining, len(data))
        self.remaining -= take
        self.done = self.remaining == 0
        return take


_HEX = {c: int(chr(c), 16) for c in b"0123456789abcdefABCDEF"}
_MAX_LINE = 4096


class ChunkedBody:
    """A state machine over ``Transfer-Encoding: chunked``; it skips chunk data without looking at it."""

    def __init__(self) -> None:
        self.state = "size"
        self.size = self.digits = self.remaining = self.line = 0
        self.done = False

    def _fail(self, why: str) -> BadRequest:
        return BadRequest(f"the chunked body is malformed: {why}")

    def feed(self, data: bytes | memoryview) -> int:
        i, end = 0, len(data)
        while i < end and not self.done:
            if self.state == "data":
                take = min(self.remaining, end - i)
                i, self.remaining = i + take, self.remaining - take
                self.state = "data" if self.remaining else "data-cr"
                continue
            byte, i = data[i], i + 1
            self._step(byte)
        return i

    def _step(self, byte: int) -> None:
        state = self.state
        self.line += 1
        if self.line > _MAX_LINE and state in ("ext", "trailer"):
            msg = f"a chunk-size or trailer line is longer than {_MAX_LINE} bytes"
            raise self._fail(msg)
        if state == "size":
            if byte in _HEX and self.digits < 16:
                self.size, self.digits = self.size * 16 + _HEX[byte], self.digits + 1
            elif self.digits and byte in b"; \t":
                self.state = "ext"
            elif self.digits and byte == 0x0D:
                self.state = "size-lf"
            else:
                msg = "a chunk size is not a hex number"
                raise self._fail(msg)
        elif state == "ext":
            if byte == 0x0D:
                self.state = "size-lf"
            elif byte == 0x0A:
                msg = "a bare LF ends a chunk-size line"
                raise self._fail(msg)
        elif state in ("size-lf", "data-lf", "trailer-lf", "end-lf"):
            if byte != 0x0A:
                msg = "a CR is not followed by LF"
                raise self._fail(msg)
            self.line = 0
            if state == "size-lf":
                self.state = "data" if self.size else "trailer-start"
                self.remaining, self.size, self.digits = self.size, 0, 0
            elif state == "end-lf":
                self.done = True
            else:
                self.state = "size" if state == "data-lf" else "trailer-start"
        elif state == "data-cr":
            if byte != 0x0D:
                msg = "chunk data is longer than its size"
                raise self._fail(msg)
            self.state = "data-lf"
        elif state == "trailer-start":
            if byte == 0x0A:
                msg = "a bare LF ends the trailers"
                raise self._fail(msg)
            self.state = "end-lf" if byte == 0x0D else "trailer"
        elif state == "trailer":
            if byte == 0x0D:
                self.state = "trailer-lf"
            elif byte == 0x0A:
                msg = "a bare LF ends a trailer line"
                raise self._fail(msg)
