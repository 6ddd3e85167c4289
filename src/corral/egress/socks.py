"""SOCKS5 (RFC 1928) as the proxy speaks it: no authentication, CONNECT only.

Pure functions over the bytes a client has sent so far: each parser returns ``None`` while the
message is incomplete, the parsed message with how many bytes it used when complete, and raises
``SocksError`` carrying the reply code when the message must be refused.
"""

from __future__ import annotations

import dataclasses
import ipaddress

__all__ = [
    "ADDRESS_TYPE_NOT_SUPPORTED",
    "COMMAND_NOT_SUPPORTED",
    "CONNECTION_REFUSED",
    "GENERAL_FAILURE",
    "HOST_UNREACHABLE",
    "NOT_ALLOWED",
    "SUCCEEDED",
    "Greeting",
    "SocksError",
    "SocksRequest",
    "choose_method",
    "parse_greeting",
    "parse_request",
    "reply",
]

VERSION = 5
NO_AUTH = 0x00
NO_ACCEPTABLE_METHOD = 0xFF

SUCCEEDED = 0x00
GENERAL_FAILURE = 0x01
NOT_ALLOWED = 0x02
"""connection not allowed by ruleset"""
NETWORK_UNREACHABLE = 0x03
HOST_UNREACHABLE = 0x04
CONNECTION_REFUSED = 0x05
COMMAND_NOT_SUPPORTED = 0x07
ADDRESS_TYPE_NOT_SUPPORTED = 0x08

_CONNECT = 1
_IPV4, _DOMAIN, _IPV6 = 1, 3, 4


class SocksError(ValueError):
    """A request refused before any policy decision; ``code`` is the reply to send."""

    def __init__(self, reason: str, code: int = GENERAL_FAILURE) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclasses.dataclass(frozen=True)
class Greeting:
    methods: frozenset[int]
    size: int


@dataclasses.dataclass(frozen=True)
class SocksRequest:
    host: str
    """A domain name as sent, or an address (IPv6 without brackets)."""
    port: int
    size: int


def parse_greeting(data: bytes | bytearray) -> Greeting | None:
    if len(data) < 2:
        return None
    if data[0] != VERSION:
        msg = f"the client speaks SOCKS version {data[0]}, not 5"
        raise SocksError(msg)
    size = 2 + data[1]
    if len(data) < size:
        return None
    return Greeting(frozenset(data[2:size]), size)


def choose_method(greeting: Greeting) -> bytes:
    """The method-selection reply: no authentication, or "no acceptable methods"."""
    return bytes((VERSION, NO_AUTH if NO_AUTH in greeting.methods else NO_ACCEPTABLE_METHOD))


def parse_request(data: bytes | bytearray) -> SocksRequest | None:
    if len(data) < 5:
        return None
    version, command, _reserved, kind = data[0], data[1], data[2], data[3]
    if version != VERSION:
        msg = f"the request has SOCKS version {version}, not 5"
        raise SocksError(msg)
    if kind == _IPV4:
        size, start = 4 + 4 + 2, 4
    elif kind == _IPV6:
        size, start = 4 + 16 + 2, 4
    elif kind == _DOMAIN:
        size, start = 4 + 1 + data[4] + 2, 5
    else:
        msg = f"the address type {kind} is not IPv4 (1), a domain name (3) or IPv6 (4)"
        raise SocksError(msg, ADDRESS_TYPE_NOT_SUPPORTED)
    if len(data) < size:
        return None
    if command != _CONNECT:
        msg = f"the SOCKS command {command} is not supported; only CONNECT (1) is"
        raise SocksError(msg, COMMAND_NOT_SUPPORTED)
    raw = bytes(data[start : size - 2])
    port = int.from_bytes(data[size - 2 : size], "big")
    if kind == _DOMAIN:
        if not raw or not raw.isascii():
            msg = "the domain name is empty or not ASCII; send it in punycode"
            raise SocksError(msg, NOT_ALLOWED)
        host = raw.decode("ascii")
    else:
        host = str(ipaddress.ip_address(raw))
    return SocksRequest(host, port, size)


def reply(code: int) -> bytes:
    """A reply with ``code``; the bound address is left 0.0.0.0:0, which clients ignore."""
    return bytes((VERSION, code, 0, _IPV4, 0, 0, 0, 0, 0, 0))
