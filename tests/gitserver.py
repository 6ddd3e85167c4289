"""A git server for tests and benchmarks: the real ``git http-backend`` over smart HTTP on 127.0.0.1.

``serve(root)`` serves every bare repository under ``root`` (``GIT_PROJECT_ROOT``, export-all) and
yields the base URL, so ``f"{url}/repo.git"`` clones. Push (receive-pack) works; with ``token``
it needs HTTP Basic auth whose password is that token (``private=True``: every request does).
``make_repo`` builds a bare repository of N files and a few commits with ``git fast-import``;
``add_commit`` adds one more commit to a branch of it. Nothing here imports pytest.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO

__all__ = ["GIT_ENV", "Request", "add_commit", "file_content", "git", "make_repo", "serve"]

GIT_ENV = {
    "PATH": os.environ.get("PATH", os.defpath),
    "HOME": os.environ.get("HOME", "/"),
    "LC_ALL": "C",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.invalid",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.invalid",
}
"""The environment the helpers run git with: no host or user configuration, a fixed identity."""


@dataclasses.dataclass(frozen=True)
class Request:
    """One request the server answered: what was asked, with which Basic-auth credentials."""

    method: str
    path: str
    status: int
    user: str | None
    password: str | None


@dataclasses.dataclass(frozen=True)
class _Config:
    root: Path
    token: str | None
    private: bool
    log: list[Request] | None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    config: _Config


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _serve(self) -> None:
        config = self.server.config
        parts = urllib.parse.urlsplit(self.path)
        push = parts.path.endswith("/git-receive-pack") or "service=git-receive-pack" in parts.query
        user, password = self._credentials()
        authorized = config.token is not None and password == config.token
        if config.token is not None and (push or config.private) and not authorized:
            self._record(401, user, password)
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="corral-test"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self._body()
        env = {
            **GIT_ENV,
            "GIT_PROJECT_ROOT": str(config.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": urllib.parse.unquote(parts.path),
            "QUERY_STRING": parts.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
        }
        if authorized or push:  # http-backend serves receive-pack only to an authenticated user
            env["REMOTE_USER"] = user or "anonymous"
        for header, name in (("Git-Protocol", "GIT_PROTOCOL"), ("Content-Encoding", "HTTP_CONTENT_ENCODING")):
            if self.headers.get(header):
                env[name] = self.headers[header]
        with tempfile.TemporaryFile() as stdin:
            stdin.write(body)
            stdin.seek(0)
            with subprocess.Popen(
                ["git", "http-backend"], env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            ) as backend:
                assert backend.stdout is not None
                status, headers = _cgi_headers(backend.stdout)
                self._record(status, user, password)
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                shutil.copyfileobj(backend.stdout, self.wfile, 1 << 16)

    def _credentials(self) -> tuple[str | None, str | None]:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None, None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user, password

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(chunks)

    def _record(self, status: int, user: str | None, password: str | None) -> None:
        log = self.server.config.log
        if log is not None:
            log.append(Request(self.command, self.path, status, user, password))


def _cgi_headers(stdout: IO[bytes]) -> tuple[int, list[tuple[str, str]]]:
    status, headers = 200, []
    while True:
        line = stdout.readline().decode("latin-1").rstrip("\r\n")
        if not line:
            return status, headers
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = int(value.split()[0])
        else:
            headers.append((name, value.strip()))


@contextlib.contextmanager
def serve(
    root: Path, *, token: str | None = None, private: bool = False, log: list[Request] | None = None
) -> Iterator[str]:
    """Serve the bare repositories under ``root`` on 127.0.0.1; yields ``http://127.0.0.1:PORT``."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.config = _Config(root, token, private, log)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def git(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None, input: bytes | None = None) -> str:
    """Run git with ``GIT_ENV`` (plus ``env``); its stdout, or an error carrying its stderr."""
    done = subprocess.run(
        ["git", *args], cwd=cwd, env={**GIT_ENV, **(env or {})}, input=input, capture_output=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout.decode(errors="replace").strip()


def _data(payload: bytes) -> bytes:
    return b"data %d\n%s" % (len(payload), payload)


def _commit(branch: str, message: str, when: int, parent: str | None, changes: Mapping[str, bytes | None]) -> bytes:
    stream = [
        b"commit refs/heads/" + branch.encode(),
        b"committer Test Author <author@example.invalid> %d +0000\n" % when,
    ]
    stream[-1] += _data(message.encode())
    if parent is not None:
        stream.append(b"from " + parent.encode())
    for path, content in changes.items():
        if content is None:
            stream.append(b"D " + path.encode())
        else:
            stream.append(b"M 100644 inline " + path.encode() + b"\n" + _data(content))
    return b"\n".join(stream) + b"\n\n"


_WORDS = [
    *("value", "index", "result", "count", "items", "self", "return", "import", "def", "class", "for", "in"),
    *("if", "else", "None", "True", "False", "data", "path", "name", "config", "error", "message", "request"),
    *("response", "client", "server", "cache", "mirror", "branch", "commit", "token", "options"),
]


@functools.cache
def _lines() -> tuple[str, ...]:
    """A fixed pool of code-like lines that files are assembled from."""
    rng = random.Random(0)
    lines = []
    for _ in range(8192):
        words = " ".join(rng.choices(_WORDS, k=rng.randrange(2, 10)))
        lines.append(f"{'    ' * rng.randrange(3)}{words}  # {rng.getrandbits(24):06x}\n")
    return tuple(lines)


def file_content(index: int, size: int) -> bytes:
    """Deterministic, distinct, source-like text for file ``index``: ``size`` bytes on average."""
    rng = random.Random(index)
    count = max(1, (size // 2 + rng.randrange(size + 1)) // 47)  # the pool's lines average about 47 bytes
    return (f"# file {index}\n" + "".join(rng.choices(_lines(), k=count))).encode()


def make_repo(path: Path, *, files: int = 3, commits: int = 2, size: int = 120, branch: str = "main") -> Path:
    """A bare repository at ``path``: ``files`` files in the first commit, then ``commits - 1`` edits."""
    git("init", "--quiet", "--bare", str(path))
    git("symbolic-ref", "HEAD", f"refs/heads/{branch}", cwd=path)
    tree = {f"src/pkg{i // 500:03d}/module_{i:05d}.py": file_content(i, size) for i in range(files)}
    first = int(time.time()) - commits
    stream = _commit(branch, "Initial commit", first, None, tree)
    for n in range(1, commits):
        stream += _commit(branch, f"Edit {n}", first + n, None, {"README.md": f"edit {n}\n".encode()})
    git("fast-import", "--quiet", cwd=path, input=stream)
    return path


def add_commit(
    repo: Path, changes: Mapping[str, bytes | None], *, branch: str = "main", message: str = "Change"
) -> str:
    """Commit ``changes`` (path to content, or None to delete) on ``branch`` of a bare repo; the new SHA."""
    exists = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"], cwd=repo, env=GIT_ENV, capture_output=True
    )
    parent = f"refs/heads/{branch}^0" if exists.returncode == 0 else None
    git("fast-import", "--quiet", cwd=repo, input=_commit(branch, message, int(time.time()), parent, changes))
    return git("rev-parse", f"refs/heads/{branch}", cwd=repo)
