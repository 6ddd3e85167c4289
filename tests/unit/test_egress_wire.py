"""The egress proxy's parsers as data: HTTP request heads, chunked bodies, TLS ClientHello, SOCKS5."""

from __future__ import annotations

import ssl

import pytest

from corral.egress import socks
from corral.egress.http import (
    BadRequest,
    ChunkedBody,
    LengthBody,
    error_response,
    find_head_end,
    parse_request,
    split_authority,
    upstream_head,
)
from corral.egress.tls import NotClientHello, client_hello_sni


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def test_absolute_get_is_parsed_and_rewritten() -> None:
    request = parse_request(
        head(
            "GET http://Example.com:8080/a/b?c=d HTTP/1.1",
            "Host: example.com:8080",
            "Proxy-Connection: keep-alive",
            "Proxy-Authorization: Basic eA==",
            "Connection: keep-alive, X-Secret",
            "X-Secret: 1",
            "Accept:  */* ",
        )
    )
    assert (request.method, request.host, request.port, request.path) == ("GET", "Example.com", 8080, "/a/b?c=d")
    assert (request.content_length, request.chunked, request.is_connect) == (None, False, False)
    assert upstream_head(request) == head(
        "GET /a/b?c=d HTTP/1.1", "Host: example.com:8080", "Accept: */*", "Connection: close"
    )


@pytest.mark.parametrize(
    ("target", "host", "port", "path"),
    [
        ("http://example.com", "example.com", 80, "/"),
        ("http://example.com?q", "example.com", 80, "/?q"),
        ("HTTP://example.com:81/", "example.com", 81, "/"),
        ("http://[::1]:8080/x", "[::1]", 8080, "/x"),
        ("http://127.0.0.1/x", "127.0.0.1", 80, "/x"),
    ],
)
def test_absolute_targets(target: str, host: str, port: int, path: str) -> None:
    host_header = host if port == 80 else f"{host}:{port}"
    request = parse_request(head(f"GET {target} HTTP/1.1", f"Host: {host_header}"))
    assert (request.host, request.port, request.path) == (host, port, path)


def test_connect_and_bodies() -> None:
    connect = parse_request(head("CONNECT example.com:443 HTTP/1.1", "Host: example.com:443"))
    assert (connect.is_connect, connect.host, connect.port) == (True, "example.com", 443)
    post = parse_request(head("POST http://a.example/ HTTP/1.1", "Host: a.example", "Content-Length: 5"))
    assert post.content_length == 5
    chunked = parse_request(head("POST http://a.example/ HTTP/1.1", "Host: a.example", "Transfer-Encoding: Chunked"))
    assert chunked.chunked
    old = parse_request(head("GET http://a.example:81/ HTTP/1.0"))
    assert upstream_head(old) == head("GET / HTTP/1.0", "Host: a.example:81", "Connection: close")


MALFORMED = [
    # lines of the head, a fragment of the reason
    (
        ["GET http://a.example/ HTTP/1.1", "Host: a.example", "Content-Length: 1", "Content-Length: 1"],
        "2 content-length",
    ),
    (["GET http://a.example/ HTTP/1.1", "Host: a.example", "Content-Length: 1, 1"], "not a number"),
    (["GET http://a.example/ HTTP/1.1", "Host: a.example", "Content-Length: -1"], "not a number"),
    (["GET http://a.example/ HTTP/1.1", "Host: a.example", "Content-Length: 1", "Transfer-Encoding: chunked"], "both"),
    (["GET http://a.example/ HTTP/1.1", "Host: a.example", "Transfer-Encoding: gzip, chunked"], "not supported"),
    (
        ["GET http://a.example/ HTTP/1.1", "Host: a.example", "Transfer-Encoding: chunked", "Transfer-Encoding: x"],
        "2 transfer",
    ),
    (["GET http://a.example/ HTTP/1.0", "Transfer-Encoding: chunked"], "not supported"),
    (["GET http://a.example/ HTTP/1.1", "Host: a.example", "X-A: 1", " folded"], "obs-fold"),
    (["GET http://a.example/ HTTP/1.1", "Host: a.example", "X-A: 1", "\tfolded"], "obs-fold"),
    (["GET http://a.example/ HTTP/1.1", "Host : a.example"], "is not 'Name: value'"),
    (["GET http://a.example/ HTTP/1.1", "Host a.example"], "is not 'Name: value'"),
    (["GET http://a.example/ HTTP/1.1", "Host: a.example", "X: a\x00b"], "control character"),
    (["GET http://a.example/ HTTP/1.1", "Host: a.example\rX: y"], "bare CR"),
    (["GET http://a.example/ HTTP/1.1", "Host: a.example\nX: y"], "bare CR or LF"),
    (["GET /path HTTP/1.1", "Host: a.example"], "not an absolute http:// URI"),
    (["GET a.example/path HTTP/1.1", "Host: a.example"], "not an absolute http:// URI"),
    (["GET https://a.example/ HTTP/1.1", "Host: a.example"], "use CONNECT"),
    (["GET http://a.example/#frag HTTP/1.1", "Host: a.example"], "fragment"),
    (["GET http://user@a.example/ HTTP/1.1", "Host: a.example"], "not host[:port]"),
    (["GET http://a.example:0/ HTTP/1.1", "Host: a.example"], "no valid port"),
    (["GET http://a.example:x/ HTTP/1.1", "Host: a.example"], "no valid port"),
    (["GET http://a.example/ HTTP/1.1"], "no Host header"),
    (["GET http://a.example/ HTTP/1.1", "Host: a.example", "Host: a.example"], "2 host headers"),
    (["GET http://a.example/  HTTP/1.1", "Host: a.example"], "is not 'METHOD target HTTP/1.1'"),
    (["GET http://a.example/ HTTP/2.0", "Host: a.example"], "is not 'METHOD target HTTP/1.1'"),
    (["PRI * HTTP/2.0"], "is not 'METHOD target HTTP/1.1'"),
    (["G(T http://a.example/ HTTP/1.1", "Host: a.example"], "is not 'METHOD target HTTP/1.1'"),
    (["CONNECT a.example HTTP/1.1"], "has no port"),
    (["CONNECT a.example:443 HTTP/1.1", "Content-Length: 3"], "has a body"),
    (["GET http://a.example/\xe9 HTTP/1.1", "Host: a.example"], "printable ASCII"),
]


@pytest.mark.parametrize(("lines", "why"), MALFORMED)
def test_malformed_requests_are_400(lines: list[str], why: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_request(head(*lines))
    assert caught.value.status == 400
    assert why.lower() in caught.value.reason.lower()


@pytest.mark.parametrize(
    ("url", "host_header"),
    [
        ("http://a.example/", "b.example"),
        ("http://a.example/", "a.example:8080"),
        ("http://a.example:8080/", "a.example"),
        ("http://127.0.0.1/", "a.example"),
        ("http://a.example/", "a.example@b.example"),
    ],
)
def test_host_header_disagreeing_with_the_url_is_403(url: str, host_header: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_request(head(f"GET {url} HTTP/1.1", f"Host: {host_header}"))
    assert caught.value.status == 403
    assert "disagrees with the URL authority" in caught.value.reason
    assert caught.value.host
    assert caught.value.port


@pytest.mark.parametrize("host_header", ["A.EXAMPLE", "a.example:80", "a.example."])
def test_host_header_equivalent_forms_agree(host_header: str) -> None:
    parse_request(head("GET http://a.example/ HTTP/1.1", f"Host: {host_header}"))


def test_split_authority() -> None:
    assert split_authority("a.example:443", None) == ("a.example", 443)
    assert split_authority("[::1]:443", None) == ("[::1]", 443)
    assert split_authority("[::1]", 80) == ("[::1]", 80)
    for bad in ("a.example", ":443", "[::1", "a.example:65536", "a\\b:1"):
        with pytest.raises(BadRequest):
            split_authority(bad, None)


def test_find_head_end_and_error_response() -> None:
    assert find_head_end(b"GET / HTTP/1.1\r\n") is None
    assert find_head_end(b"GET / HTTP/1.1\r\n\r\nbody") == 18
    assert find_head_end(b"GET / HTTP/1.1\r\n\r\n", limit=18) == 18
    with pytest.raises(BadRequest, match="larger than 17 bytes"):
        find_head_end(b"GET / HTTP/1.1\r\n\r\n", limit=17)
    with pytest.raises(BadRequest, match="larger than 8 bytes"):
        find_head_end(b"GET / HTTP/1.1", limit=8)
    response = error_response(403, "evil.example:443 is not in the allowlist\r\nSet-Cookie: x")
    head_part, body = response.split(b"\r\n\r\n", 1)
    assert head_part.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"X-Corral-Denied: evil.example:443 is not in the allowlist??Set-Cookie: x\r\n" in head_part
    assert b"Content-Length: %d" % len(body) in head_part
    assert b"Connection: close" in head_part


def feed_all(limit: ChunkedBody | LengthBody, data: bytes, step: int) -> int:
    used = 0
    for start in range(0, len(data), step):
        part = data[start : start + step]
        taken = limit.feed(part)
        used += taken
        if taken < len(part):
            break
    return used


CHUNKED = b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nTrailer: x\r\n\r\n"


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_chunked_body_end_is_found_across_any_split(step: int) -> None:
    body = ChunkedBody()
    assert feed_all(body, CHUNKED + b"GET /smuggled HTTP/1.1\r\n\r\n", step) == len(CHUNKED)
    assert body.done


@pytest.mark.parametrize(
    "data",
    [b"x\r\n", b"5\r\nhello\r\n0\n\r\n", b"5\r\nhelloo\r\n", b"5\nhello", b"1" * 17 + b"\r\n", b"0\r\nX\nY"],
)
def test_malformed_chunked_bodies(data: bytes) -> None:
    with pytest.raises(BadRequest, match="chunked body is malformed"):
        ChunkedBody().feed(data)


def test_length_body() -> None:
    body = LengthBody(5)
    assert body.feed(b"abc") == 3
    assert not body.done
    assert body.feed(b"defgh") == 2
    assert body.done
    assert LengthBody(0).done


def client_hello(server_hostname: str | None) -> bytes:
    context = ssl.create_default_context()
    if server_hostname is None:
        context.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_sni_of_a_real_client_hello() -> None:
    hello = client_hello("API.Example.com")
    assert client_hello_sni(hello) is not None
    assert client_hello_sni(hello).sni == "api.example.com"  # type: ignore[union-attr]
    assert client_hello_sni(client_hello(None)).sni is None  # type: ignore[union-attr]
    for cut in (0, 3, 5, len(hello) // 2, len(hello) - 1):
        assert client_hello_sni(hello[:cut]) is None


def test_a_client_hello_split_over_records_is_reassembled() -> None:
    hello = client_hello("a.example")
    message = hello[5:]
    records = b"".join(
        bytes((22, 3, 1)) + len(part).to_bytes(2, "big") + part
        for part in (message[i : i + 100] for i in range(0, len(message), 100))
    )
    assert client_hello_sni(records).sni == "a.example"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"SSH-2.0-OpenSSH\r\n",
        bytes((22, 3, 1, 0, 4, 2, 0, 0, 0)),
        bytes((23, 3, 3, 0, 1, 0)),
    ],
)
def test_what_is_not_a_client_hello(data: bytes) -> None:
    with pytest.raises(NotClientHello):
        client_hello_sni(data)


def test_socks_greeting_and_request() -> None:
    assert socks.parse_greeting(b"\x05") is None
    greeting = socks.parse_greeting(b"\x05\x02\x00\x02rest")
    assert greeting == socks.Greeting(frozenset({0, 2}), 4)
    assert socks.choose_method(greeting) == b"\x05\x00"
    assert socks.choose_method(socks.Greeting(frozenset({2}), 3)) == b"\x05\xff"
    domain = b"\x05\x01\x00\x03\x09a.example\x01\xbb"
    assert socks.parse_request(domain[:-1]) is None
    assert socks.parse_request(domain) == socks.SocksRequest("a.example", 443, len(domain))
    assert socks.parse_request(b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50") == socks.SocksRequest("127.0.0.1", 80, 10)
    v6 = b"\x05\x01\x00\x04" + bytes(15) + b"\x01\x00\x50"
    assert socks.parse_request(v6) == socks.SocksRequest("::1", 80, 22)
    assert socks.reply(socks.NOT_ALLOWED) == b"\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50", socks.COMMAND_NOT_SUPPORTED),
        (b"\x05\x01\x00\x09\x00\x00\x00\x00\x00", socks.ADDRESS_TYPE_NOT_SUPPORTED),
        (b"\x04\x01\x00\x01\x7f\x00\x00\x01\x00\x50", socks.GENERAL_FAILURE),
        (b"\x05\x01\x00\x03\x02\xc3\xa9\x00\x50", socks.NOT_ALLOWED),
    ],
)
def test_socks_requests_refused_before_the_policy(data: bytes, code: int) -> None:
    with pytest.raises(socks.SocksError) as caught:
        socks.parse_request(data)
    assert caught.value.code == code
