"""Egress policy as data: patterns accepted and refused, decisions, and the resolved-address vet."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from corral.egress.interfaces import CachedAddresses, local_addresses, parse_fib_trie, parse_if_inet6
from corral.egress.policy import IPAddress, Pattern, Policy, canonical_host, parse_pattern, vet_address
from corral.errors import PolicyError

ACCEPTED = [
    # text, kind, value, port, canonical text
    ("example.com", "host", "example.com", None, "example.com"),
    ("Example.COM", "host", "example.com", None, "example.com"),
    ("example.com.", "host", "example.com", None, "example.com"),
    ("  example.com ", "host", "example.com", None, "example.com"),
    ("localhost", "host", "localhost", None, "localhost"),
    ("xn--bcher-kva.example", "host", "xn--bcher-kva.example", None, "xn--bcher-kva.example"),
    ("api.example.com:443", "host", "api.example.com", 443, "api.example.com:443"),
    ("*.example.com", "suffix", "example.com", None, "*.example.com"),
    ("*.example.co.uk", "suffix", "example.co.uk", None, "*.example.co.uk"),
    ("*.example.com:8443", "suffix", "example.com", 8443, "*.example.com:8443"),
    ("127.0.0.1", "ip", "127.0.0.1", None, "127.0.0.1"),
    ("127.0.0.1:8080", "ip", "127.0.0.1", 8080, "127.0.0.1:8080"),
    ("[::1]", "ip", "::1", None, "[::1]"),
    ("[::1]:443", "ip", "::1", 443, "[::1]:443"),
    ("[2001:DB8::1]:1", "ip", "2001:db8::1", 1, "[2001:db8::1]:1"),
    ("[::ffff:10.0.0.1]:80", "ip", "10.0.0.1", 80, "10.0.0.1:80"),
    ("example.com:65535", "host", "example.com", 65535, "example.com:65535"),
]


@pytest.mark.parametrize(("text", "kind", "value", "port", "canonical"), ACCEPTED)
def test_accepted_patterns(text: str, kind: str, value: str, port: int | None, canonical: str) -> None:
    pattern = parse_pattern(text)
    assert (pattern.kind, pattern.value, pattern.port) == (kind, value, port)
    assert pattern.text == canonical == str(pattern)
    assert parse_pattern(pattern.text) == pattern


REFUSED = [
    # text, a fragment of the sentence that says why
    ("", "is empty"),
    ("   ", "is empty"),
    ("*", "would allow every host"),
    ("*:443", "would allow every host"),
    ("*.com", "whole top-level domain com"),
    ("*.io:443", "whole top-level domain io"),
    ("*.co.uk", "public suffix"),
    ("*.github.io", "public suffix"),
    ("foo.*.com", "not the whole first label"),
    ("*foo.com", "not the whole first label"),
    ("f*o.com", "not the whole first label"),
    ("**.example.com", "not the whole first label"),
    ("*.*.example.com", "not the whole first label"),
    ("example.*", "not the whole first label"),
    ("*.", "not a valid domain"),
    ("https://example.com", "has a scheme"),
    ("http://example.com:80", "has a scheme"),
    ("example.com/foo", "has a path"),
    ("/etc/passwd", "has a path"),
    ("example.com:0", "port 0, outside 1-65535"),
    ("example.com:70000", "port 70000, outside 1-65535"),
    ("example.com:abc", "port 'abc' that is not a number"),
    ("example.com:", "port '' that is not a number"),
    ("example.com:-1", "that is not a number"),
    ("[::1]:0", "port 0"),
    ("127.0.0.1:99999", "port 99999"),
    ("exa mple.com", "not a valid host name"),
    ("exa_mple.com", "not a valid host name"),
    ("-example.com", "not a valid host name"),
    ("example-.com", "not a valid host name"),
    ("a..b", "not a valid host name"),
    (".", "not a valid host name"),
    ("a" * 64 + ".com", "not a valid host name"),
    ("user@example.com", "not a valid host name"),
    ("example.123", "not a valid host name"),
    ("bücher.de", "punycode"),
    ("127.1", "looks like an IP address"),
    ("2130706433", "looks like an IP address"),
    ("0x7f.0.0.1", "looks like an IP address"),
    ("010.0.0.1", "looks like an IP address"),
    ("::1", "write it in brackets"),
    ("[::1", "bracketed IPv6"),
    ("[fe80::1%eth0]", "bracketed IPv6"),
    ("[example.com]", "bracketed IPv6"),
    ("[::1]x", "bracketed IPv6"),
]


@pytest.mark.parametrize(("text", "why"), REFUSED)
def test_refused_patterns(text: str, why: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_pattern(text)
    message = str(caught.value)
    assert why in message
    assert message.endswith(".")
    if text.strip():
        assert repr(text) in message, "the sentence names the bad value"


def test_policy_builds_from_strings_and_rejects_a_bare_string() -> None:
    policy = Policy(allow=["example.com", parse_pattern("*.example.org")], deny=["bad.example.org"])
    assert policy.allow == (Pattern("host", "example.com"), Pattern("suffix", "example.org"))
    assert policy.deny == (Pattern("host", "bad.example.org"),)
    assert policy == Policy(allow=["EXAMPLE.com", "*.example.org"], deny=["bad.example.org"])
    with pytest.raises(PolicyError, match="not the single string"):
        Policy(allow="example.com")
    with pytest.raises(PolicyError, match=r"https://x\.com"):
        Policy(allow=["ok.com", "https://x.com"])


def test_policy_is_frozen() -> None:
    policy = Policy(allow=["example.com"])
    with pytest.raises(AttributeError):
        policy.allow = ()  # type: ignore[misc]


ALLOW = ["example.com", "*.corp.example", "api.example.net:443", "127.0.0.1:8080", "[::1]:9000", "10.1.2.3"]
DENY = ["secret.corp.example", "*.evil.corp.example", "example.com:25"]
DECISIONS = [
    # host, port, allowed, rule
    ("example.com", 443, True, "example.com"),
    ("example.com", 80, True, "example.com"),
    ("EXAMPLE.com.", 443, True, "example.com"),
    ("example.com", 25, False, "example.com:25"),  # deny wins over allow
    ("www.example.com", 443, False, None),  # exact host does not cover subdomains
    ("a.corp.example", 443, True, "*.corp.example"),
    ("a.b.corp.example", 443, True, "*.corp.example"),
    ("corp.example", 443, False, None),  # *.suffix does not cover the apex
    ("xcorp.example", 443, False, None),
    ("secret.corp.example", 443, False, "secret.corp.example"),
    ("x.evil.corp.example", 443, False, "*.evil.corp.example"),
    ("evil.corp.example", 443, True, "*.corp.example"),
    ("api.example.net", 443, True, "api.example.net:443"),
    ("api.example.net", 80, False, None),
    ("127.0.0.1", 8080, True, "127.0.0.1:8080"),
    ("127.0.0.1", 8081, False, None),
    ("[::ffff:127.0.0.1]", 8080, True, "127.0.0.1:8080"),
    ("::1", 9000, True, "[::1]:9000"),
    ("[::1]", 9000, True, "[::1]:9000"),
    ("10.1.2.3", 22, True, "10.1.2.3"),
    ("localhost", 8080, False, None),  # a name never matches an IP rule
    ("2130706433", 8080, False, None),  # a number getaddrinfo would take for 127.0.0.1
    ("127.1", 8080, False, None),
    ("0x7f000001", 8080, False, None),
    ("example.com", 0, False, None),
    ("example.com", 70000, False, None),
    ("exa mple.com", 443, False, None),
    ("example.com\r\nX: y", 443, False, None),
    ("", 443, False, None),
    ("bücher.example.com", 443, False, None),
]


@pytest.mark.parametrize(("host", "port", "allowed", "rule"), DECISIONS)
def test_decisions(host: str, port: int, allowed: bool, rule: str | None) -> None:
    decision = Policy(allow=ALLOW, deny=DENY).decide(host, port)
    assert (decision.allowed, decision.rule) == (allowed, rule), decision.reason
    assert decision.reason


def test_default_deny_and_reasons() -> None:
    assert Policy().decide("example.com", 443).reason == "example.com:443 is not in the allowlist"
    policy = Policy(allow=["example.com"], deny=["example.com:25"])
    assert policy.decide("example.com", 25).reason == "example.com:25 matches the deny rule example.com:25"
    assert policy.decide("example.com", 443).reason == "example.com:443 matches the allow rule example.com"
    assert "not a valid host name" in policy.decide("exa mple.com", 443).reason
    assert "outside 1-65535" in policy.decide("example.com", 0).reason


@pytest.mark.parametrize(
    ("host", "canonical"),
    [
        ("Example.COM.", "example.com"),
        ("127.0.0.1", ipaddress.ip_address("127.0.0.1")),
        ("[::1]", ipaddress.ip_address("::1")),
        ("::ffff:169.254.169.254", ipaddress.ip_address("169.254.169.254")),
        ("[fe80::1%eth0]", None),
        ("a_b.com", None),
        ("1.2.3", None),
    ],
)
def test_canonical_host(host: str, canonical: object) -> None:
    assert canonical_host(host) == canonical


VET_POLICY = Policy(
    allow=["*.example.com", "127.0.0.1:8080", "[::1]:9000", "10.0.0.5:443", "169.254.169.254", "192.168.1.1"],
    deny=["203.0.114.9", "8.8.4.4:443"],
)
OWN = ["198.51.200.7", "2001:db8:ffff::7"]
VETS = [
    # ip, port, expected fragment of the refusal (None: may be dialed)
    ("93.184.216.34", 443, None),
    ("2606:2800:220:1:248:1893:25c8:1946", 443, None),
    ("8.8.4.4", 80, None),
    ("8.8.4.4", 443, "deny rule 8.8.4.4:443"),
    ("203.0.114.9", 443, "deny rule 203.0.114.9"),
    ("127.0.0.1", 443, "a loopback address"),
    ("127.9.9.9", 443, "a loopback address"),
    ("127.0.0.1", 8080, None),  # allowed exactly, ip and port
    ("::ffff:127.0.0.1", 8080, None),
    ("::ffff:127.0.0.1", 443, "a loopback address"),  # IPv4-mapped is unwrapped
    ("::1", 443, "a loopback address"),
    ("::1", 9000, None),
    ("0.0.0.0", 443, "unspecified"),
    ("::", 443, "unspecified"),
    ("10.0.0.5", 443, None),
    ("10.0.0.5", 80, "a private address (RFC 1918)"),
    ("10.200.0.1", 443, "RFC 1918"),
    ("172.16.0.1", 443, "RFC 1918"),
    ("172.31.255.255", 443, "RFC 1918"),
    ("172.32.0.1", 443, None),
    ("192.168.1.1", 443, "RFC 1918"),  # an IP allow entry without a port grants no exception
    ("::ffff:192.168.0.1", 443, "RFC 1918"),
    ("100.64.0.1", 443, "carrier-grade NAT"),
    ("100.127.255.255", 443, "carrier-grade NAT"),
    ("100.128.0.1", 443, None),
    ("fc00::1", 443, "unique local"),
    ("fd12:3456::1", 443, "unique local"),
    ("fe80::1", 443, "link-local"),
    ("fe80::1%eth0", 443, "link-local"),
    ("169.254.1.1", 443, "link-local"),
    ("224.0.0.1", 443, "multicast"),
    ("ff02::1", 443, "multicast"),
    ("255.255.255.255", 443, "reserved"),
    ("169.254.169.254", 80, "cloud metadata"),
    ("::ffff:169.254.169.254", 80, "cloud metadata"),
    ("fd00:ec2::254", 80, "cloud metadata"),
    ("100.100.100.200", 80, "cloud metadata"),
    ("168.63.129.16", 80, "cloud metadata"),
    ("198.51.200.7", 443, "an address of this host"),
    ("::ffff:198.51.200.7", 443, "an address of this host"),
    ("2001:db8:ffff::7", 443, "documentation"),
    ("2002:7f00:1::", 443, "6to4/NAT64 address for 127.0.0.1"),
    ("64:ff9b::a9fe:a9fe", 80, "6to4/NAT64 address for 169.254.169.254"),
    ("64:ff9b::808:808", 443, None),
    ("not-an-ip", 443, "not an IP address"),
]


@pytest.mark.parametrize(("ip", "port", "why"), VETS)
def test_vet_address(ip: str, port: int, why: str | None) -> None:
    refusal = vet_address(ip, port, "api.example.com", VET_POLICY, OWN)
    if why is None:
        assert refusal is None
    else:
        assert refusal is not None
        assert why in refusal


def test_vet_reason_names_the_host_the_address_and_the_fix() -> None:
    refusal = vet_address("127.0.0.1", 80, "api.example.com", Policy(allow=["api.example.com"]))
    assert refusal == (
        "api.example.com resolved to 127.0.0.1, a loopback address; "
        "only an allow rule for exactly 127.0.0.1:80 reaches it"
    )
    literal = vet_address("::1", 80, "[::1]", Policy(allow=["[::1]"]))
    assert literal == "::1 is a loopback address; only an allow rule for exactly [::1]:80 reaches it"


def test_vet_accepts_address_objects() -> None:
    own = {ipaddress.ip_address("203.0.113.77")}
    assert vet_address(ipaddress.ip_address("203.0.113.77"), 1, "h.example", Policy(), own) is not None
    assert vet_address(ipaddress.ip_address("1.1.1.1"), 1, "h.example", Policy(), own) is None


FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 203.0.113.0/24 2 0 2
           |-- 203.0.113.7
              /32 host LOCAL
"""
IF_INET6 = """00000000000000000000000000000001 01 80 10 80       lo
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
20010db8000000000000000000000042 04 40 00 82     eth0
"""


def test_host_addresses_are_read_from_proc(tmp_path: Path) -> None:
    assert parse_fib_trie(FIB_TRIE) == {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("203.0.113.7")}
    assert parse_if_inet6(IF_INET6) == {
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("fe80::fc:ff:fe00:1"),
        ipaddress.ip_address("2001:db8::42"),
    }
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "fib_trie").write_text(FIB_TRIE)
    found = local_addresses(tmp_path)  # no if_inet6: loopback is there anyway
    assert found == {ipaddress.ip_address(a) for a in ("127.0.0.1", "203.0.113.7", "::1")}


def test_cached_addresses_are_read_again_after_their_ttl() -> None:
    reads: list[int] = []

    def source() -> frozenset[IPAddress]:
        reads.append(1)
        return frozenset({ipaddress.ip_address(f"192.0.2.{len(reads)}")})

    fresh = CachedAddresses(ttl=0.0, source=source)
    assert fresh() != fresh()
    cached = CachedAddresses(ttl=3600.0, source=source)
    assert cached() == cached()


def test_a_decision_names_the_port_of_its_rule() -> None:
    """Tunnels to ports without TLS need a rule that names the port; the decision carries it."""
    policy = Policy(["api.test", "git.test:8080"])
    assert policy.decide("api.test", 80).rule_port is None
    assert policy.decide("git.test", 8080).rule_port == 8080
