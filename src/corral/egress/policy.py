"""Egress policy: which hosts a sandbox may reach, decided on the name before any DNS.

A pattern is an exact host (``example.com``), the subdomains of a domain (``*.example.com``,
not the apex), or an IP literal (``127.0.0.1``, ``[::1]``), each with an optional ``:port``.
Patterns too broad or malformed to mean what their author meant are refused when the policy is
built. ``Policy.decide`` looks at the name only: deny rules win, then allow rules, and anything
else is denied. ``vet_address`` is the second gate, after DNS: an allowed name that resolves to
loopback, private, link-local, metadata or the host's own addresses is refused, unless the
operator allowed exactly that ``ip:port``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable
from typing import Literal

from corral.errors import PolicyError

__all__ = [
    "Decision",
    "IPAddress",
    "Pattern",
    "Policy",
    "canonical_host",
    "format_target",
    "parse_pattern",
    "vet_address",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Host = str | IPAddress
"""A canonical host: a lower-case name without a trailing dot, or an address (IPv4-mapped unwrapped)."""

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_PORT = re.compile(r"[0-9]{1,5}")

# Two-label suffixes under which unrelated people register names: a wildcard over one of them
# is as broad as a wildcard over a TLD. Not the whole Public Suffix List, only the common ones.
PUBLIC_SUFFIXES = frozenset(
    {
        *(f"{sld}.uk" for sld in ("co", "org", "ac", "gov", "me", "ltd", "plc", "net", "sch", "nhs")),
        *(f"{sld}.au" for sld in ("com", "net", "org", "edu", "gov", "id")),
        *(f"{sld}.nz" for sld in ("co", "org", "net", "ac", "govt")),
        *(f"{sld}.jp" for sld in ("co", "ne", "or", "ac", "go")),
        *(f"{sld}.br" for sld in ("com", "net", "org", "gov")),
        *(f"{sld}.cn" for sld in ("com", "net", "org", "gov", "edu")),
        *(f"{sld}.in" for sld in ("co", "net", "org", "gov")),
        *("co.za", "co.kr", "or.kr", "co.il", "co.id", "com.tw", "com.hk", "com.sg", "com.my"),
        *("com.mx", "com.ar", "com.tr", "com.ua", "com.pl", "com.ru", "co.th", "com.vn"),
        *("github.io", "gitlab.io", "herokuapp.com", "appspot.com", "blogspot.com", "pages.dev"),
        *("workers.dev", "vercel.app", "netlify.app", "web.app", "firebaseapp.com", "ngrok.io"),
        *("azurewebsites.net", "cloudfront.net", "amazonaws.com", "r2.dev", "glitch.me"),
    }
)


def _fail(text: str, why: str) -> PolicyError:
    return PolicyError(f"The egress pattern {text!r} {why}.")


def _parse_port(text: str, port: str) -> int:
    if not _PORT.fullmatch(port):
        raise _fail(text, f"has a port {port!r} that is not a number; write a port in 1-65535 or drop it")
    value = int(port)
    if not 1 <= value <= 65535:
        raise _fail(text, f"has port {value}, outside 1-65535; write a port in that range or drop it")
    return value


def _unwrap(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            address = ipaddress.IPv6Address(str(address).split("%", 1)[0])
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
    return address


def _ipv6(text: str) -> IPAddress | None:
    if "%" in text:
        return None
    try:
        return _unwrap(ipaddress.IPv6Address(text))
    except ValueError:
        return None


def _is_name(host: str) -> bool:
    if not host or len(host) > 253:
        return False
    labels = host.split(".")
    return all(_LABEL.fullmatch(label) for label in labels) and not _NUMERIC_LABEL.fullmatch(labels[-1])


def canonical_host(host: str) -> Host | None:
    """``host`` as the policy compares it, or ``None`` when it is neither a valid name nor an address."""
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        return _ipv6(host[1:-1])
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        pass
    if ":" in host:
        return _ipv6(host)
    if host.endswith("."):
        host = host[:-1]
    return host if host.isascii() and _is_name(host) else None


def format_target(host: Host | str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    text = str(host)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


@dataclasses.dataclass(frozen=True)
class Pattern:
    """One parsed allow or deny entry."""

    kind: Literal["host", "suffix", "ip"]
    value: str
    """The host name, the domain under ``*.`` (without it), or the address in compressed form."""
    port: int | None = None

    @property
    def text(self) -> str:
        host = f"*.{self.value}" if self.kind == "suffix" else self.value
        if self.kind == "ip" and ":" in host:
            host = f"[{host}]"
        return host if self.port is None else f"{host}:{self.port}"

    def __str__(self) -> str:
        return self.text

    def matches(self, host: Host, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.kind == "ip":
            return not isinstance(host, str) and str(host) == self.value
        if not isinstance(host, str):
            return False
        if self.kind == "host":
            return host == self.value
        return host.endswith(self.value) and host[-len(self.value) - 1 : -len(self.value)] == "."


def parse_pattern(text: str) -> Pattern:
    """Parse one allow or deny entry; raise ``PolicyError`` saying what is wrong and how to write it."""
    entry = text.strip().lower()
    if not entry:
        msg = "An egress pattern is empty; remove it or write a host such as example.com."
        raise PolicyError(msg)
    if "://" in entry:
        raise _fail(text, "has a scheme; write the host alone, as in example.com (add :port to limit the port)")
    if "/" in entry:
        raise _fail(text, "has a path; egress rules match hosts only, so write the host alone")
    if not entry.isascii():
        raise _fail(text, "has non-ASCII characters; write the name in punycode (xn--...)")
    host, port = entry, None
    if entry.startswith("["):
        close = entry.find("]")
        rest = entry[close + 1 :] if close > 0 else "?"
        if rest and not rest.startswith(":"):
            raise _fail(text, "is not a valid bracketed IPv6 address; write it as [::1] or [::1]:443")
        host, port = entry[1:close], _parse_port(text, rest[1:]) if rest else None
        address = _ipv6(host)
        if address is None:
            raise _fail(text, "is not a valid bracketed IPv6 address; write it as [::1] or [::1]:443")
        return Pattern("ip", str(address), port)
    if entry.count(":") > 1:
        raise _fail(text, "looks like an IPv6 address; write it in brackets, as in [::1] or [::1]:443")
    if ":" in entry:
        host, port_text = entry.split(":")
        port = _parse_port(text, port_text)
    try:
        return Pattern("ip", str(ipaddress.IPv4Address(host)), port)
    except ValueError:
        pass
    if host == "*":
        raise _fail(text, "would allow every host; list the hosts the sandbox needs instead")
    if host.startswith("*."):
        suffix = host[2:]
        if "*" in suffix:
            raise _fail(text, "has a wildcard that is not the whole first label; write *.example.com or the host")
        if not _is_name(suffix):
            raise _fail(text, f"names {suffix!r}, which is not a valid domain; write a domain, as in *.example.com")
        if "." not in suffix:
            raise _fail(text, f"covers the whole top-level domain {suffix}; name a domain under it, *.example.{suffix}")
        if suffix in PUBLIC_SUFFIXES:
            raise _fail(
                text, f"covers {suffix}, a public suffix shared by unrelated owners; name a domain under it instead"
            )
        return Pattern("suffix", suffix, port)
    if "*" in host:
        raise _fail(text, "has a wildcard that is not the whole first label; write *.example.com or the host")
    if host.endswith("."):
        host = host[:-1]
    labels = host.split(".")
    if labels and all(_NUMERIC_LABEL.fullmatch(label) for label in labels):
        raise _fail(text, "looks like an IP address but is not one; write the full dotted address, as in 127.0.0.1")
    if not _is_name(host):
        raise _fail(
            text,
            "is not a valid host name (dot-separated labels of letters, digits and inner hyphens, "
            "at most 63 characters each, not ending in a number); fix the spelling",
        )
    return Pattern("host", host, port)


def _patterns(entries: Iterable[str | Pattern]) -> tuple[Pattern, ...]:
    if isinstance(entries, str):
        msg = f"Egress patterns must be a list of strings, not the single string {entries!r}; write [{entries!r}]."
        raise PolicyError(msg)
    return tuple(entry if isinstance(entry, Pattern) else parse_pattern(entry) for entry in entries)


@dataclasses.dataclass(frozen=True)
class Decision:
    """The verdict on one ``host:port``, with the rule that made it and a sentence saying why."""

    allowed: bool
    rule: str | None
    reason: str
    rule_port: int | None = None
    """The port the deciding rule names, if it names one."""


@dataclasses.dataclass(frozen=True, init=False)
class Policy:
    """Deny rules, then allow rules, then deny. ``Policy()`` denies everything."""

    allow: tuple[Pattern, ...]
    deny: tuple[Pattern, ...]

    def __init__(self, allow: Iterable[str | Pattern] = (), deny: Iterable[str | Pattern] = ()) -> None:
        object.__setattr__(self, "allow", _patterns(allow))
        object.__setattr__(self, "deny", _patterns(deny))

    def decide(self, host: str, port: int) -> Decision:
        """Decide on the name alone; nothing here resolves or connects."""
        canonical = canonical_host(host)
        if canonical is None:
            return Decision(False, None, f"{host!r} is not a valid host name or IP address")
        target = format_target(canonical, port)
        if not 1 <= port <= 65535:
            return Decision(False, None, f"{target}: port {port} is outside 1-65535")
        for pattern in self.deny:
            if pattern.matches(canonical, port):
                return Decision(False, pattern.text, f"{target} matches the deny rule {pattern.text}")
        for pattern in self.allow:
            if pattern.matches(canonical, port):
                return Decision(True, pattern.text, f"{target} matches the allow rule {pattern.text}", pattern.port)
        return Decision(False, None, f"{target} is not in the allowlist")

    def allows_exactly(self, address: IPAddress, port: int) -> bool:
        """Whether an IP-literal allow entry names exactly ``address`` and ``port``."""
        value = str(_unwrap(address))
        return any(p.kind == "ip" and p.port == port and p.value == value for p in self.allow)


def _networks(*pairs: tuple[str, str]) -> tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...]:
    return tuple((ipaddress.ip_network(net), what) for net, what in pairs)


_PRIVATE = "a private address (RFC 1918)"
_DOCS = "a documentation address"
BLOCKED_NETWORKS = _networks(
    ("0.0.0.0/8", "an unspecified (this-network) address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address"),
    ("10.0.0.0/8", _PRIVATE),
    ("172.16.0.0/12", _PRIVATE),
    ("192.168.0.0/16", _PRIVATE),
    ("100.64.0.0/10", "a carrier-grade NAT address (RFC 6598)"),
    ("192.0.0.0/24", "an IETF protocol address"),
    ("192.0.2.0/24", _DOCS),
    ("198.51.100.0/24", _DOCS),
    ("203.0.113.0/24", _DOCS),
    ("198.18.0.0/15", "a benchmarking address"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "a reserved address"),
    ("::/128", "an unspecified address"),
    ("::1/128", "a loopback address"),
    ("::/96", "an IPv4-compatible (deprecated) address"),
    ("100::/64", "a discard-only address"),
    ("2001:db8::/32", _DOCS),
    ("fc00::/7", "a unique local (private) address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local (private) address"),
    ("ff00::/8", "a multicast address"),
    ("64:ff9b:1::/48", "a local-use NAT64 address"),
)
"""Where an allowed name must not lead, with what each range is (checked after the metadata set)."""

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "168.63.129.16")
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _category(address: IPAddress, own: frozenset[IPAddress]) -> str | None:
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for network, what in BLOCKED_NETWORKS:
        if address.version == network.version and address in network:
            return what
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and (inner := _category(embedded, own)) is not None:
            return f"a 6to4/NAT64 address for {embedded}, {inner}"
    if address in own:
        return "an address of this host"
    return None


def vet_address(
    ip: str | IPAddress,
    port: int,
    host: str,
    policy: Policy,
    own_addresses: Iterable[str | IPAddress] = (),
) -> str | None:
    """Why the resolved ``ip`` of an allowed ``host`` must not be dialed, or ``None`` when it may.

    IPv4-mapped IPv6 is unwrapped first. IP-literal deny rules apply to resolved addresses too.
    An IP-literal allow rule with exactly this address and port lets a blocked range through.
    """
    try:
        address = _unwrap(ipaddress.ip_address(ip) if isinstance(ip, str) else ip)
    except ValueError:
        return f"{host} resolved to {ip!r}, which is not an IP address"
    target = format_target(address, port)
    for pattern in policy.deny:
        if pattern.kind == "ip" and pattern.matches(address, port):
            return f"{host} resolved to {address}, which matches the deny rule {pattern.text}"
    if policy.allows_exactly(address, port):
        return None
    own = frozenset(_unwrap(ipaddress.ip_address(a) if isinstance(a, str) else a) for a in own_addresses)
    what = _category(address, own)
    if what is None:
        return None
    where = f"{address} is" if canonical_host(host) == address else f"{host} resolved to {address},"
    return f"{where} {what}; only an allow rule for exactly {target} reaches it"
