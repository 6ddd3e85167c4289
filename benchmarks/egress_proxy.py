"""The egress proxy's cost: tunnel throughput against a direct loopback download, added latency, concurrency.

The origin server and the client each run in their own process, so that only the proxy runs in
this one, on its own thread, as it will in corral. Throughput: a download of 1 GiB directly over
TCP, then through a CONNECT tunnel on the proxy's Unix socket (best of five runs each, interleaved).
Latency: small GET requests, a new connection each, directly and as absolute-URI requests
through the proxy; the difference of the p50s is what the proxy adds. Concurrency: 200 CONNECT
tunnels opened at once, each downloading 1 MiB, against the same 200 downloads made directly
(a few rounds, alternating); every tunnel must complete, and all 200 within 1 s. Everything
stays on 127.0.0.1, on the proxy's own socket (not through a sandbox's relay). Run it with
``python -m benchmarks egress_proxy`` or ``python -m benchmarks.egress_proxy``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import REPO
from benchmarks._stats import Budget, Result, Series, Target, percentile, print_result

NAME = "egress_proxy"
TITLE = "egress proxy: tunnel throughput vs direct (1 GiB), added latency of a small GET, 200 concurrent tunnels"

DOWNLOAD = 1 << 30
SMALL = 100
CONCURRENT = 200
CONCURRENT_SIZE = 1 << 20
CONCURRENT_ROUNDS = 3
MAX_CONCURRENT_SECONDS = 1.0
_BLOCK = bytes(range(256)) * 4096  # 1 MiB


def serve() -> None:
    """The origin: ``GET /N`` answers N bytes, one request per connection; prints its port."""
    import socketserver

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = self.request.recv(65536)
                if not chunk:
                    return
                data += chunk
            size = int(data.split(b" ", 2)[1].rsplit(b"/", 1)[1])
            self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
            view, left = memoryview(_BLOCK), size
            while left:
                left -= self.request.send(view[: min(left, len(_BLOCK))])

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 1024

    with Server(("127.0.0.1", 0), Handler) as server:
        print(server.server_address[1], flush=True)
        server.serve_forever()


def fetch(address: str, target: str, size: int, tunnel: bool) -> float:
    """Seconds to fetch ``size`` bytes of ``target``: directly when ``address`` is host:port, else via that socket."""
    started = time.perf_counter()
    if address.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address)
        request = f"GET http://{target}/{size} HTTP/1.1\r\nHost: {target}\r\n\r\n"
        if tunnel:
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            head = b""
            while not head.endswith(b"\r\n\r\n") and len(head) < 4096:
                head += sock.recv(1)
            assert head.startswith(b"HTTP/1.1 200"), head
            request = f"GET /{size} HTTP/1.1\r\nHost: {target}\r\n\r\n"
    else:
        host, port = address.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)))
        request = f"GET /{size} HTTP/1.1\r\nHost: {target}\r\n\r\n"
    sock.sendall(request.encode())
    view = memoryview(bytearray(1 << 20))
    total = 0
    while n := sock.recv_into(view):
        total += n
    sock.close()
    assert total > size, f"got {total} bytes, expected more than {size}"
    return time.perf_counter() - started


async def _one(address: str, target: str, size: int, timeout: float) -> float:
    """Seconds for one download of ``size`` bytes, opened at the same time as the others."""
    import asyncio

    started = time.perf_counter()
    async with asyncio.timeout(timeout):
        if address.startswith("/"):
            reader, writer = await asyncio.open_unix_connection(address)
            writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        else:
            host, port = address.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET /{size} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        total = 0
        while chunk := await reader.read(1 << 18):
            total += len(chunk)
        writer.close()
    if total <= size:
        raise RuntimeError(f"got {total} bytes, expected more than {size}")
    return time.perf_counter() - started


def concurrent(address: str, target: str, size: int, count: int, timeout: float = 30.0) -> None:
    """Open ``count`` downloads at once; print the wall time, then each one's seconds or ``fail REASON``."""
    import asyncio

    async def main() -> tuple[float, list[float | BaseException]]:
        started = time.perf_counter()
        downloads = (_one(address, target, size, timeout) for _ in range(count))
        outcomes = await asyncio.gather(*downloads, return_exceptions=True)
        return time.perf_counter() - started, outcomes

    wall, outcomes = asyncio.run(main())
    print(f"{wall:.9f}")
    for outcome in outcomes:
        print(f"fail {type(outcome).__name__}" if isinstance(outcome, BaseException) else f"{outcome:.9f}")


def _concurrent(address: str, target: str) -> tuple[float, list[float], int]:
    """One burst by a client in its own process: wall seconds, per-download seconds, failures."""
    argv = [sys.executable, "-m", "benchmarks.egress_proxy", "--concurrent", address, target]
    argv += [str(CONCURRENT_SIZE), str(CONCURRENT)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True, cwd=REPO)
    wall, *lines = done.stdout.split("\n")
    times = [float(line) for line in lines if line and not line.startswith("fail")]
    return float(wall), times, sum(1 for line in lines if line.startswith("fail"))


def _times(address: str, target: str, size: int, count: int, tunnel: bool = False) -> list[float]:
    """``count`` fetches by a client in its own process."""
    argv = [sys.executable, "-m", "benchmarks.egress_proxy", "--client", address, target, str(size), str(count)]
    done = subprocess.run([*argv, str(int(tunnel))], capture_output=True, text=True, timeout=900, check=True, cwd=REPO)
    return [float(line) for line in done.stdout.split()]


def run(budget: Budget) -> Result:
    from corral.egress import Policy, ProxyThread

    result = Result(NAME, TITLE)
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.egress_proxy", "--serve"], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert server.stdout is not None
        target = f"127.0.0.1:{int(server.stdout.readline())}"
        with tempfile.TemporaryDirectory() as tmp, ProxyThread() as proxy:
            path = str(Path(tmp) / "egress.sock")
            proxy.open("bench", path, Policy([target]))
            downloads = max(1, min(5, budget.process_runs))
            _times(target, target, 1 << 20, 2)
            bulk: dict[str, list[float]] = {"direct": [], "tunnel": []}
            for _ in range(downloads):  # interleaved, so that a slow moment of the VM meets both
                bulk["direct"] += _times(target, target, DOWNLOAD, 1)
                bulk["tunnel"] += _times(path, target, DOWNLOAD, 1, tunnel=True)
            direct, tunnelled = min(bulk["direct"]), min(bulk["tunnel"])
            count = max(10, budget.max_iterations)
            _times(path, target, SMALL, budget.warmup)
            plain = Series("small GET, direct over TCP", _times(target, target, SMALL, count))
            proxied = Series("small GET, absolute URI via the proxy", _times(path, target, SMALL, count))
            walls: dict[str, list[float]] = {"direct": [], "tunnel": []}
            each: dict[str, list[float]] = {"direct": [], "tunnel": []}
            failed = {"direct": 0, "tunnel": 0}
            _concurrent(path, target)  # warm-up
            for _ in range(CONCURRENT_ROUNDS):
                for kind, address in (("direct", target), ("tunnel", path)):
                    wall, times, failures = _concurrent(address, target)
                    walls[kind].append(wall)
                    each[kind] += times
                    failed[kind] += failures
    finally:
        server.terminate()
        server.wait(10)
    gib = DOWNLOAD / (1 << 30)
    result.series += [
        plain,
        proxied,
        Series(f"{CONCURRENT} concurrent 1 MiB downloads, direct: each", each["direct"]),
        Series(f"{CONCURRENT} concurrent 1 MiB CONNECT tunnels: each", each["tunnel"]),
        Series(f"{CONCURRENT} concurrent 1 MiB downloads, direct: all (wall)", walls["direct"]),
        Series(f"{CONCURRENT} concurrent 1 MiB CONNECT tunnels: all (wall)", walls["tunnel"]),
    ]
    tunnel_wall, direct_wall = percentile(walls["tunnel"], 50), percentile(walls["direct"], 50)
    result.ratios["tunnel throughput / direct"] = direct / tunnelled
    result.ratios["proxied / direct small GET p50"] = proxied.p50 / plain.p50
    result.targets.append(Target("tunnel download time / direct (throughput >= 50%)", tunnelled / direct, 2.0, "x"))
    result.targets.append(Target("added p50 latency of a small GET", (proxied.p50 - plain.p50) * 1e3, 1.0, "ms"))
    result.ratios[f"{CONCURRENT} concurrent tunnels / direct, wall p50"] = tunnel_wall / direct_wall
    result.targets.append(Target(f"failed of {CONCURRENT} concurrent tunnels, all rounds", failed["tunnel"], 0))
    result.targets.append(
        Target(f"wall time of {CONCURRENT} concurrent 1 MiB tunnels, p50", tunnel_wall, MAX_CONCURRENT_SECONDS, " s")
    )
    result.notes.append(
        f"{CONCURRENT} concurrent 1 MiB downloads, {CONCURRENT_ROUNDS} rounds after a warm-up, alternating: "
        f"tunnels {CONCURRENT * CONCURRENT_ROUNDS - failed['tunnel']}/{CONCURRENT * CONCURRENT_ROUNDS} completed, "
        f"direct {CONCURRENT * CONCURRENT_ROUNDS - failed['direct']}/{CONCURRENT * CONCURRENT_ROUNDS}"
    )
    result.notes.append(
        f"1 GiB download: direct {gib / direct:.2f} GiB/s, tunnel {gib / tunnelled:.2f} GiB/s "
        f"(best of {downloads}); tunnels splice(2) after their first 256 KiB"
    )
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve()
    elif sys.argv[1:2] == ["--concurrent"]:
        address, target, size, count = sys.argv[2:6]
        concurrent(address, target, int(size), int(count))
    elif sys.argv[1:2] == ["--client"]:
        address, target, size, count, tunnel = sys.argv[2:7]
        for _ in range(int(count)):
            print(f"{fetch(address, target, int(size), tunnel == '1'):.9f}", flush=True)
    else:
        print_result(run(Budget()))
