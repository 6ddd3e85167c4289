"""The server name (SNI) of a TLS ClientHello, read without terminating TLS.

A tunnel to a TLS port must open with a ClientHello naming the host the proxy allowed;
otherwise one allowed name (a CDN) could carry a request for another (domain fronting).
``client_hello_sni`` reassembles the handshake from as many TLS records as it takes, and tells
"need more bytes" (``None``) from "this is not a ClientHello" (``NotClientHello``).
"""

from __future__ import annotations

import dataclasses

__all__ = ["ALERT_UNRECOGNIZED_NAME", "MAX_HELLO", "ClientHello", "NotClientHello", "client_hello_sni"]

MAX_HELLO = 64 * 1024
"""The largest ClientHello accepted (post-quantum key shares make them a few KiB)."""
ALERT_UNRECOGNIZED_NAME = bytes((21, 3, 3, 0, 2, 2, 112))
"""A fatal ``unrecognized_name`` alert record, sent before closing a refused tunnel."""

_HANDSHAKE = 22
_CLIENT_HELLO = 1
_SERVER_NAME = 0


class NotClientHello(ValueError):
    """The bytes are not the start of a well-formed TLS ClientHello."""


@dataclasses.dataclass(frozen=True)
class ClientHello:
    sni: str | None
    """The host_name of the server_name extension, lower-case; ``None`` when absent."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            msg = "a ClientHello field runs past its end"
            raise NotClientHello(msg)
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def number(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_bytes: int) -> bytes:
        return self.take(self.number(length_bytes))

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _handshake(data: bytes | bytearray) -> bytes | None:
    """The reassembled ClientHello message body, or ``None`` while more records are needed."""
    message = bytearray()
    pos = 0
    while True:
        if len(data) - pos < 5:
            return None
        kind, major, length = data[pos], data[pos + 1], int.from_bytes(data[pos + 3 : pos + 5], "big")
        if kind != _HANDSHAKE or major != 3 or not 0 < length <= 16384 + 2048:
            msg = "the bytes are not a TLS handshake record"
            raise NotClientHello(msg)
        if len(data) - pos - 5 < length:
            return None
        message += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(message) >= 4:
            if message[0] != _CLIENT_HELLO:
                msg = "the first handshake message is not a ClientHello"
                raise NotClientHello(msg)
            size = int.from_bytes(message[1:4], "big")
            if size > MAX_HELLO:
                msg = f"the ClientHello claims {size} bytes, more than {MAX_HELLO}"
                raise NotClientHello(msg)
            if len(message) >= 4 + size:
                return bytes(message[4 : 4 + size])


def _server_name(body: bytes) -> str | None:
    names = _Reader(body)
    names = _Reader(names.vector(2))
    found: str | None = None
    while names.left:
        kind, name = names.number(1), names.vector(2)
        if kind == 0:
            if found is not None:
                msg = "the server_name extension names two hosts"
                raise NotClientHello(msg)
            if not name.isascii() or not name or b"\x00" in name:
                msg = "the server name is not an ASCII host name"
                raise NotClientHello(msg)
            found = name.decode("ascii").lower()
    return found


def client_hello_sni(data: bytes | bytearray) -> ClientHello | None:
    """Parse the ClientHello at the start of ``data``; ``None`` while it is incomplete."""
    body = _handshake(data)
    if body is None:
        return None
    hello = _Reader(body)
    hello.take(2 + 32)  # legacy_version, random
    hello.vector(1)  # legacy_session_id
    hello.vector(2)  # cipher_suites
    hello.vector(1)  # legacy_compression_methods
    if not hello.left:
        return ClientHello(None)
    extensions = _Reader(hello.vector(2))
    seen: set[int] = set()
    sni: str | None = None
    while extensions.left:
        kind, body = extensions.number(2), extensions.vector(2)
        if kind in seen:
            msg = f"the ClientHello repeats extension {kind}"
            raise NotClientHello(msg)
        seen.add(kind)
        if kind == _SERVER_NAME:
            sni = _server_name(body)
    return ClientHello(sni)
