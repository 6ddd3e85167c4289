"""The API gateway on real sockets, in front of the stand-in API that accepts only the real credential."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.egress.gateway import MAX_BODY, Gateway
from corral.egress.policy import Policy
from corral.egress.proxy import ProxyConfig
from corral.egress.thread import ProxyThread
from corral.jobs.models import Usage
from corral.secrets import Credential, Secret
from tests.claude import claude_bin, offline_env, run_claude
from tests.standin_api import StandinAPI

API_KEY = Credential("api_key", Secret("sk-ant-api-real-key"), "test")
OAUTH = Credential("oauth_token", Secret("sk-ant-oat-real-token"), "test")
CREDENTIALS = pytest.mark.parametrize("credential", [API_KEY, OAUTH], ids=["api_key", "oauth_token"])


def body(script: str, *, stream: bool = True, messages: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    first = {"role": "user", "content": [{"type": "text", "text": "<system-reminder>x</system-reminder>"}]}
    first["content"].append({"type": "text", "text": script})
    return {
        "model": "claude-test",
        "max_tokens": 100,
        "stream": stream,
        "system": [{"type": "text", "text": "Primary working directory: /work"}],
        "messages": [first, *(messages or [])],
    }


def run(
    credential: Credential, test: Callable[[StandinAPI, Gateway, httpx.AsyncClient], Awaitable[None]], **kw: Any
) -> None:
    """Run ``test`` with a stand-in that wants ``credential``, a gateway in front of it, and a client."""

    async def main() -> None:
        with StandinAPI(required_auth=credential.header()) as api:
            async with (
                Gateway(kw.get("upstream", api.url), credential) as gateway,
                httpx.AsyncClient(base_url=gateway.url, trust_env=False, timeout=10.0) as client,
            ):
                await test(api, gateway, client)

    asyncio.run(main())


def placeholder_header(gateway: Gateway) -> dict[str, str]:
    name, value = gateway.credential.header()
    return {name: value.replace(gateway.credential.secret.reveal(), gateway.placeholder.reveal())}


@CREDENTIALS
def test_the_real_credential_reaches_the_upstream_and_the_placeholder_does_not(credential: Credential) -> None:
    async def test(api: StandinAPI, gateway: Gateway, client: httpx.AsyncClient) -> None:
        headers = {**placeholder_header(gateway), "anthropic-version": "2023-06-01", "anthropic-beta": "b1,b2"}
        reply = await client.post("/v1/messages?beta=true", json=body("SAY hi"), headers=headers)
        assert reply.status_code == 200, reply.text
        assert "event: message_stop" in reply.text
        counted = await client.post("/v1/messages/count_tokens", json=body("SAY hi"), headers=headers)
        assert counted.status_code == 200
        assert counted.json()["input_tokens"] > 0
        seen = api.requests
        assert [(r.method, r.path) for r in seen] == [
            ("POST", "/v1/messages?beta=true"),
            ("POST", "/v1/messages/count_tokens"),
        ]
        name, value = credential.header()
        for request in seen:
            assert request.headers[name] == value
            assert (request.headers["anthropic-version"], request.headers["anthropic-beta"]) == ("2023-06-01", "b1,b2")
            assert all(gateway.placeholder.reveal() not in v for v in request.headers.values())
            assert request.headers["host"] == api.url.removeprefix("http://")
        assert gateway.requests == 2

    run(credential, test)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-api-key": "corral-placeholder-wrong"},
        {"authorization": "Bearer corral-placeholder-wrong"},
        {"x-api-key": API_KEY.secret.reveal()},  # even the real key: only the sandbox's placeholder is let through
    ],
    ids=["missing", "wrong-key", "wrong-bearer", "real-key"],
)
def test_a_request_without_the_placeholder_is_refused_and_not_forwarded(headers: dict[str, str]) -> None:
    async def test(api: StandinAPI, gateway: Gateway, client: httpx.AsyncClient) -> None:
        reply = await client.post("/v1/messages", json=body("SAY hi"), headers=headers)
        assert reply.status_code == 401
        assert reply.json()["error"]["type"] == "authentication_error"
        assert API_KEY.secret.reveal() not in reply.text
        assert gateway.placeholder.reveal() not in reply.text
        assert (api.requests, gateway.requests) == ([], 0)

    run(API_KEY, test)


def test_sse_passes_unbuffered() -> None:
    stall = 1.5

    async def test(api: StandinAPI, gateway: Gateway, client: httpx.AsyncClient) -> None:
        seen: list[tuple[float, bytes]] = []
        start = time.monotonic()
        request = body(f"STALL {stall}\nSAY hello")
        async with client.stream("POST", "/v1/messages", json=request, headers=placeholder_header(gateway)) as reply:
            assert reply.headers["content-type"] == "text/event-stream"
            async for chunk in reply.aiter_bytes():
                seen.append((time.monotonic() - start, chunk))
        first = next(t for t, chunk in seen if b"event: message_start" in chunk)
        last = next(t for t, chunk in seen if b"event: message_stop" in chunk)
        assert first < stall / 2, seen  # message_start arrived while the stand-in was still stalling
        assert last >= stall

    run(API_KEY, test)


def test_metered_usage_equals_what_the_upstream_sent() -> None:
    async def test(api: StandinAPI, gateway: Gateway, client: httpx.AsyncClient) -> None:
        headers = placeholder_header(gateway)
        script = "BASH true\nBASH false"
        history: list[dict[str, Any]] = []
        for step in range(3):  # a conversation of three turns: two tool uses, then DONE
            reply = await client.post("/v1/messages", json=body(script, messages=history), headers=headers)
            events = [json.loads(line[6:]) for line in reply.text.splitlines() if line.startswith("data: ")]
            blocks = [e["content_block"] for e in events if e["type"] == "content_block_start"]
            uses = [b for b in blocks if b["type"] == "tool_use"]
            assert len(uses) == (1 if step < 2 else 0)
            if uses:
                result = {"type": "tool_result", "tool_use_id": uses[0]["id"], "content": "ok"}
                history += [{"role": "assistant", "content": uses}, {"role": "user", "content": [result]}]
        await client.post("/v1/messages", json=body("SAY once more", stream=False), headers=headers)
        await client.post("/v1/messages/count_tokens", json=body("SAY x"), headers=headers)
        sent = Usage(**api.usage_sent)
        assert sent.output_tokens > 0
        assert gateway.usage == sent

    run(API_KEY, test)


def test_two_requests_on_one_connection() -> None:
    async def test(api: StandinAPI, gateway: Gateway, client: httpx.AsyncClient) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(gateway.url.rsplit(":", 1)[1]))
        key = placeholder_header(gateway)["x-api-key"]
        statuses = []
        for text in ("SAY one", "SAY two"):
            data = json.dumps(body(text, stream=False)).encode()
            writer.write(
                b"POST /v1/messages HTTP/1.1\r\nHost: gw\r\nx-api-key: %s\r\ncontent-length: %d\r\n\r\n%s"
                % (key.encode(), len(data), data)
            )
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
            )
            reply = json.loads(await reader.readexactly(length))
            statuses.append(head.split(b" ")[1])
            assert reply["content"][0]["text"] == text.removeprefix("SAY ")
        writer.close()
        await writer.wait_closed()
        assert statuses == [b"200", b"200"]
        assert gateway.requests == 2

    run(API_KEY, test)


def test_other_routes_and_oversized_bodies_are_answered_by_the_gateway() -> None:
    async def test(api: StandinAPI, gateway: Gateway, client: httpx.AsyncClient) -> None:
        headers = placeholder_header(gateway)
        assert (await client.head("/")).status_code == 200
        assert (await client.get("/v1/models", headers=headers)).status_code == 404
        assert (await client.post("/v1/complete", json={}, headers=headers)).status_code == 404
        reader, writer = await asyncio.open_connection("127.0.0.1", int(gateway.url.rsplit(":", 1)[1]))
        writer.write(
            b"POST /v1/messages HTTP/1.1\r\nHost: gw\r\nx-api-key: %s\r\ncontent-length: %d\r\n\r\n"
            % (headers["x-api-key"].encode(), MAX_BODY + 1)
        )
        answer = await reader.read()  # the gateway answers without reading the body, then closes
        writer.close()
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["type"] == "request_too_large"
        assert api.requests == []

    run(API_KEY, test)


def test_an_unreachable_upstream_gives_502() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"

    async def test(api: StandinAPI, gateway: Gateway, client: httpx.AsyncClient) -> None:
        reply = await client.post("/v1/messages", json=body("SAY hi"), headers=placeholder_header(gateway))
        assert reply.status_code == 502
        assert reply.json()["error"]["type"] == "api_error"
        assert API_KEY.secret.reveal() not in reply.text
        assert gateway.placeholder.reveal() not in reply.text

    run(API_KEY, test, upstream=closed)


def test_aclose_ends_a_request_still_waiting_on_the_upstream() -> None:
    async def main() -> None:
        with StandinAPI() as api:
            gateway = Gateway(api.url, API_KEY)
            await gateway.start()
            reader, writer = await asyncio.open_connection("127.0.0.1", int(gateway.url.rsplit(":", 1)[1]))
            data = json.dumps(body("SILENT")).encode()
            key = placeholder_header(gateway)["x-api-key"].encode()
            writer.write(
                b"POST /v1/messages HTTP/1.1\r\nHost: gw\r\nx-api-key: %s\r\ncontent-length: %d\r\n\r\n"
                % (key, len(data))
            )
            writer.write(data)
            for _ in range(500):
                if api.requests:
                    break
                await asyncio.sleep(0.01)
            assert len(api.requests) == 1
            start = time.monotonic()
            await asyncio.wait_for(gateway.aclose(), 5.0)
            assert time.monotonic() - start < 2.0
            assert await reader.read() == b""  # closed without an answer
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


def test_a_request_through_the_egress_proxy(tmp_path: Path) -> None:
    """The CLI in a sandbox reaches the gateway through corral's proxy: an absolute URI, sent on in origin form."""

    async def test(api: StandinAPI, gateway: Gateway, client: httpx.AsyncClient) -> None:
        target = gateway.url.removeprefix("http://")
        data = json.dumps(body("SAY through the proxy", stream=False)).encode()
        key = placeholder_header(gateway)["x-api-key"].encode()
        request = b"POST http://%s/v1/messages?beta=true HTTP/1.1\r\nHost: %s\r\nx-api-key: %s\r\n" % (
            target.encode(),
            target.encode(),
            key,
        )
        request += b"Proxy-Connection: keep-alive\r\ncontent-length: %d\r\n\r\n%s" % (len(data), data)
        with ProxyThread(ProxyConfig(handshake_timeout=5.0, linger=0.5)) as proxy:
            proxy.open("gw", tmp_path / "proxy.sock", Policy([target]))

            def exchange() -> bytes:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.settimeout(10.0)
                    sock.connect(str(tmp_path / "proxy.sock"))
                    sock.sendall(request)
                    return b"".join(iter(lambda: sock.recv(65536), b""))

            answer = await asyncio.to_thread(exchange)
        head, _, reply = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), answer
        assert json.loads(reply)["content"][0]["text"] == "through the proxy"
        (seen,) = api.requests
        assert (seen.path, seen.headers["x-api-key"]) == ("/v1/messages?beta=true", API_KEY.secret.reveal())

    run(API_KEY, test)


def test_the_real_cli_through_the_gateway_sends_only_the_real_credential(tmp_path: Path) -> None:
    claude_bin()
    project = tmp_path / "project"
    project.mkdir()

    async def test(api: StandinAPI, gateway: Gateway, client: httpx.AsyncClient) -> None:
        env = offline_env(gateway.url, tmp_path / "home", IS_SANDBOX="1", **gateway.env())
        assert API_KEY.secret.reveal() not in json.dumps(env)
        done = await asyncio.to_thread(run_claude, "WRITE hello.txt hi from the gateway", cwd=project, env=env)
        assert done.result["is_error"] is False, done.result
        assert (project / "hello.txt").read_text() == "hi from the gateway"
        posts = [r for r in api.requests if r.method == "POST"]
        assert len(posts) == 2  # the Write turn and the final DONE
        for request in api.requests:
            assert all(gateway.placeholder.reveal() not in value for value in request.headers.values())
            assert "authorization" not in request.headers
        assert all(r.headers["x-api-key"] == API_KEY.secret.reveal() for r in posts)
        assert gateway.usage == Usage(**api.usage_sent)

    run(API_KEY, test)
