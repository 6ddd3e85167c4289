"""The way out for one allowed request: decide on the name, resolve it once, vet, dial what was vetted.

``admit`` asks the policy about the name first and touches DNS only when the name is allowed.
It then resolves it once and vets every address (one refused address refuses the name: a
name that resolves to a public and a loopback address is a rebinding attempt, not a choice).
``dial`` connects to the vetted addresses themselves, in order, so no second lookup can lead
anywhere else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Iterable

from corral.egress import socks
from corral.egress.policy import Decision, IPAddress, Policy, canonical_host, format_target, vet_address
from corral.egress.resolver import Resolver

__all__ = ["MAX_ADDRESSES", "Admitted", "Refused", "Unreachable", "admit", "dial"]

MAX_ADDRESSES = 8


class Refused(Exception):
    """The policy or the address vet refused; ``rule`` is the deciding rule, ``address`` the refused one."""

    def __init__(self, reason: str, rule: str | None = None, address: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.rule, self.address = reason, rule, address


class Unreachable(Exception):
    """An allowed target could not be resolved or connected to; ``code`` is the SOCKS reply for it."""

    def __init__(self, reason: str, code: int, decision: Decision | None = None) -> None:
        super().__init__(reason)
        self.reason, self.code, self.decision = reason, code, decision


@dataclasses.dataclass(frozen=True)
class Admitted:
    decision: Decision
    addresses: tuple[str, ...]
    """Every one vetted; dial these and nothing else."""


async def admit(
    host: str,
    port: int,
    policy: Policy,
    *,
    resolver: Resolver,
    own_addresses: Iterable[IPAddress],
    timeout: float,
    tunnel_ports: frozenset[int] | None = None,
) -> Admitted:
    """Decide on the name, resolve it once, vet every address.

    With ``tunnel_ports`` the request is an opaque tunnel (CONNECT, SOCKS). Only a tunnel to one of
    those ports (TLS, whose ClientHello must name the host) can be checked against the name; to any
    other port its bytes could carry a request for another host behind a shared front end. So such
    a tunnel needs an allow rule that names its port; a rule for the name alone admits plain HTTP
    through the proxy, whose Host header is checked on every request.
    """
    decision = policy.decide(host, port)
    if not decision.allowed:
        raise Refused(decision.reason, decision.rule)
    name = canonical_host(host)
    addresses: list[str] = [str(name)]
    if isinstance(name, str):
        try:
            async with asyncio.timeout(timeout):
                addresses = list(await resolver(name, port))[:MAX_ADDRESSES]
        except Exception as err:  # a resolver is pluggable: whatever it raises, the name is unreachable
            why = "it timed out" if isinstance(err, TimeoutError) else str(err) or type(err).__name__
            msg = f"{name} could not be resolved ({why})"
            raise Unreachable(msg, socks.HOST_UNREACHABLE, decision) from err
        if not addresses:
            msg = f"{name} has no addresses"
            raise Unreachable(msg, socks.HOST_UNREACHABLE, decision)
    own = frozenset(own_addresses)
    for address in addresses:
        refusal = vet_address(address, port, host, policy, own)
        if refusal is not None:
            raise Refused(refusal, None, address)
    if tunnel_ports is not None and port not in tunnel_ports and decision.rule_port is None:
        target = f"{host}:{port}"
        why = (
            f"{target}: a tunnel to port {port} carries no TLS name to check, and the allow rule {decision.rule} "
            f"names no port; allow {target} itself, or send plain HTTP through the proxy"
        )
        raise Refused(why, decision.rule)
    return Admitted(decision, tuple(addresses))


async def dial(addresses: Iterable[str], port: int, timeout: float) -> tuple[socket.socket, str]:
    """A connected non-blocking socket to the first of ``addresses`` that answers, and which one it was."""
    loop = asyncio.get_running_loop()
    errors = []
    tried = list(addresses)
    try:
        async with asyncio.timeout(timeout):
            for address in tried:
                sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, (address, port))
                except OSError as err:
                    sock.close()
                    errors.append(f"{address}: {err.strerror or err}")
                    continue
                except BaseException:
                    sock.close()
                    raise
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock, address
    except TimeoutError:
        errors.append(f"no answer within {timeout:g} s")
    target = format_target(tried[0], port) if len(tried) == 1 else f"port {port} of {', '.join(tried)}"
    msg = f"cannot connect to {target} ({'; '.join(errors)})"
    raise Unreachable(msg, socks.CONNECTION_REFUSED)
