"""Escape attempts over the network. The sandbox has an empty network namespace: only its own loopback.

No attack here sends a packet off the host: with no route at all, connect() fails before anything
is sent, and the only listener used is the test's own, on the host's loopback.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.security.attack import Attacker

pytestmark = pytest.mark.sandbox


@pytest.fixture
def host_server() -> Iterator[socket.socket]:
    """A TCP server listening on the host's 127.0.0.1."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        yield server


def test_host_loopback_is_not_reachable(attacker: Attacker, host_server: socket.socket) -> None:
    """The attacker connects to a server on the host's 127.0.0.1: the sandbox's loopback is its own."""
    port = host_server.getsockname()[1]
    assert attacker.attempt(f"socket.create_connection(('127.0.0.1', {port}), timeout=2)") == "ECONNREFUSED"
    with pytest.raises(BlockingIOError):
        host_server.accept()  # no connection ever arrived


def test_outside_addresses_are_unreachable(attacker: Attacker) -> None:
    """The attacker connects over TCP to TEST-NET addresses (IPv4 and IPv6) and sends a UDP datagram."""
    outcomes = attacker.attempts(
        "socket.create_connection(('192.0.2.1', 80), timeout=2)",
        "socket.create_connection(('2001:db8::1', 80), timeout=2)",
        "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('198.51.100.1', 53))",
    )
    # docker's empty namespace has no IPv6 address on lo at all: no source address, so EADDRNOTAVAIL
    ipv6 = attacker.on(bwrap="ENETUNREACH", docker="EADDRNOTAVAIL")
    assert outcomes == ["ENETUNREACH", ipv6, "ENETUNREACH"]


def test_dns_does_not_resolve(attacker: Attacker) -> None:
    """The attacker resolves a public name, to exfiltrate through DNS queries."""
    setup = """
        def resolve():
            try:
                socket.getaddrinfo('example.com', 443)
            except socket.gaierror as err:
                return err.errno
            return 'resolved'
    """
    assert attacker.evaluate("resolve()", setup=setup) == socket.EAI_AGAIN


def test_only_a_loopback_interface_exists(attacker: Attacker) -> None:
    """The attacker looks for a network interface to send through."""
    assert attacker.evaluate("socket.if_nameindex()") == [[1, "lo"]]


def test_raw_and_packet_sockets_are_denied(attacker: Attacker) -> None:
    """The attacker opens raw IP and packet sockets, to forge traffic below TCP."""
    outcomes = attacker.attempts(
        "socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)",
        "socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)",
    )
    assert outcomes == ["EPERM", "EPERM"]


def test_vsock_is_denied(attacker: Attacker) -> None:
    """The attacker creates an AF_VSOCK socket: vsock is not network-namespaced (before Linux 7.0, and never for
    a guest's virtio transport), so an empty network namespace does not cut it off from the hypervisor and from
    vsock services of the machine. Only the socket is created here; nothing is connected or sent."""
    assert attacker.attempt("socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)") == "EPERM"
