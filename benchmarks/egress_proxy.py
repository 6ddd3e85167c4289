"""The egress proxy's cost: tunnel throughput against a direct loopback download, and added latency.

The origin server and the client each run in their own process, so that only the proxy runs in
this one, on its own thread, as it will in corral. Throughput: a download of 1 GiB directly over
TCP, then through a CONNECT tunnel on the proxy's Unix socket (best of a few runs each).
Latency: small GET requests, a new connection each, directly and as absolute-URI requests
through the proxy; the difference of the p50s is what the proxy adds. Everything stays on
127.0.0.1. Run it with ``python -m benchmarks egress_proxy`` (once registered in ``ALL``) or
``python -m benchmarks.egress_proxy``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import REPO
from benchmarks._stats import Budget, Result, Series, Target, print_result

NAME = "egress_proxy"
TITLE = "egress proxy: tunnel throughput vs a direct 1 GiB download, and added latency of a small GET"

DOWNLOAD = 1 << 30
SMALL = 100
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
            downloads = max(1, min(3, budget.process_runs))
            _times(target, target, 1 << 20, 2)
            direct = min(_times(target, target, DOWNLOAD, downloads))
            tunnelled = min(_times(path, target, DOWNLOAD, downloads, tunnel=True))
            count = max(10, budget.max_iterations)
            _times(path, target, SMALL, budget.warmup)
            plain = Series("small GET, direct over TCP", _times(target, target, SMALL, count))
            proxied = Series("small GET, absolute URI via the proxy", _times(path, target, SMALL, count))
    finally:
        server.terminate()
        server.wait(10)
    gib = DOWNLOAD / (1 << 30)
    result.series += [plain, proxied]
    result.ratios["tunnel throughput / direct"] = direct / tunnelled
    result.ratios["proxied / direct small GET p50"] = proxied.p50 / plain.p50
    result.targets.append(Target("tunnel download time / direct (throughput >= 50%)", tunnelled / direct, 2.0, "x"))
    result.targets.append(Target("added p50 latency of a small GET", (proxied.p50 - plain.p50) * 1e3, 1.0, "ms"))
    result.notes.append(
        f"1 GiB download: direct {gib / direct:.2f} GiB/s, tunnel {gib / tunnelled:.2f} GiB/s "
        f"(best of {downloads}); tunnels splice(2) after their first 256 KiB"
    )
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve()
    elif sys.argv[1:2] == ["--client"]:
        address, target, size, count, tunnel = sys.argv[2:7]
        for _ in range(int(count)):
            print(f"{fetch(address, target, int(size), tunnel == '1'):.9f}", flush=True)
    else:
        print_result(run(Budget()))
