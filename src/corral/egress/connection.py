"""The sockets of one proxied connection, and the tunnel that moves bytes between them.

While the proxy reads a request, a ``Side`` reads the client's socket into a bounded buffer
with ``loop.sock_recv``. Once the connection is allowed, a ``Tunnel`` moves bytes both ways
with one ``_Pump`` per direction, driven by readiness callbacks (no task, no future per chunk).
On Linux a pump ``splice``\\s through a pipe, so the data never enters Python: the kernel moves
it from one socket to the other. Where that is impossible (no ``os.splice``, no file
descriptors left for a pipe) or the proxy must read the bytes (a request body it frames), the
pump copies through one 256 KiB buffer per thread (and so does every direction for its first
256 KiB: a small exchange costs no pipe). Back-pressure is natural: a pump stops reading
its source while its destination will not take more.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
import threading

from corral.egress.http import BadRequest, BodyLimit

__all__ = ["Side", "Tunnel"]

PIPE_SIZE = 1 << 20
COPY_SIZE = 256 << 10
SPLICE_AFTER = 256 << 10
"""A direction splices once it has moved this much; before, it copies (no pipe for small exchanges)."""
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_GONE = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ESHUTDOWN, errno.ECONNABORTED)


class Side:
    """The client's socket while its request is read: a buffer of what it sent, bounded."""

    def __init__(self, sock: socket.socket, buffer_limit: int = 160 << 10) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.eof = False
        self._limit = buffer_limit
        self._loop = asyncio.get_running_loop()

    async def read_more(self) -> bool:
        """Read what arrives next; ``False`` at end of stream, on error, or when the buffer is full."""
        if self.eof or len(self.buffer) >= self._limit:
            return False
        try:
            data = await self._loop.sock_recv(self.sock, 65536)
        except OSError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    def take(self, size: int) -> bytes:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def send(self, data: bytes) -> None:
        await self._loop.sock_sendall(self.sock, data)

    async def finish(self, data: bytes = b"", linger: float = 2.0) -> None:
        """Send ``data``, end the stream, and close once the client has closed too (at most ``linger`` s).

        Closing while the client still sends would reset the connection and could destroy the
        answer before the client reads it; so what it still sends is read and dropped first.
        """
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(linger):
                if data:
                    await self._loop.sock_sendall(self.sock, data)
                self.sock.shutdown(socket.SHUT_WR)
                for _ in range(1024):
                    if not await self._loop.sock_recv(self.sock, 65536):
                        break
        self.sock.close()


def _pipe() -> tuple[int, int] | None:
    """A non-blocking pipe for splicing, or ``None`` when splicing is not possible here."""
    if not hasattr(os, "splice"):
        return None
    try:
        read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None  # out of file descriptors: copy instead
    with contextlib.suppress(OSError):
        fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return read, write


_local = threading.local()


def _scratch() -> memoryview:
    """This thread's copy buffer: read into, written out at once, copied aside only if the writer blocks."""
    view: memoryview | None = getattr(_local, "view", None)
    if view is None:
        view = _local.view = memoryview(bytearray(COPY_SIZE))
    return view


class _Pump:
    """Moves bytes one way, ``src`` to ``dst``, until ``src`` ends; then ends ``dst``'s stream.

    It reads only while nothing is waiting to be written, so at most one read is in flight.
    It copies the first ``SPLICE_AFTER`` bytes (a small request needs no pipe), then splices.
    """

    def __init__(self, tunnel: Tunnel, src: socket.socket, dst: socket.socket, limit: BodyLimit | None) -> None:
        self.tunnel = tunnel
        self.src, self.dst = src, dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.limit = limit
        self.pipe: tuple[int, int] | None = None
        self.in_pipe = 0
        self.pending = memoryview(b"")
        self.borrowed = False
        """Whether ``pending`` still points into the thread's scratch buffer."""
        self.count = 0
        self.done = False
        self.reading = self.writing = False

    def _watch(self, reading: bool, writing: bool) -> None:
        loop = self.tunnel.loop
        if reading != self.reading:
            if reading:
                loop.add_reader(self.src_fd, self.on_readable)
            else:
                loop.remove_reader(self.src_fd)
            self.reading = reading
        if writing != self.writing:
            if writing:
                loop.add_writer(self.dst_fd, self.on_writable)
            else:
                loop.remove_writer(self.dst_fd)
            self.writing = writing

    def begin(self) -> None:
        self._watch(reading=True, writing=False)

    def _read(self) -> int:
        """Read once from ``src``: the bytes now waiting to be written, 0 at its end, -1 if all were dropped."""
        if self.pipe is None and self.limit is None and self.count >= SPLICE_AFTER:
            self.pipe = _pipe()
        if self.pipe is not None:
            self.in_pipe = os.splice(self.src_fd, self.pipe[1], PIPE_SIZE, flags=_SPLICE_FLAGS)
            return self.in_pipe
        view = _scratch()
        size = self.src.recv_into(view)
        if size and self.limit is not None:
            size = (0 if self.limit.done else self.limit.feed(view[:size])) or -1
        self.pending, self.borrowed = view[: max(size, 0)], True
        return size

    def _write(self) -> None:
        """Write everything waiting; ``BlockingIOError`` when ``dst`` will not take more now."""
        if self.pipe is not None:
            while self.in_pipe:
                moved = os.splice(self.pipe[0], self.dst_fd, self.in_pipe, flags=_SPLICE_FLAGS)
                if moved <= 0:
                    raise BrokenPipeError(errno.EPIPE, "the destination took no bytes")
                self.in_pipe -= moved
            return
        while self.pending:
            self.pending = self.pending[self.dst.send(self.pending) :]

    def on_readable(self) -> None:
        try:
            size = self._read()
        except BlockingIOError:
            return
        except BadRequest as err:
            self.tunnel.end(err.reason)
            return
        except OSError as err:
            self.tunnel.fail(err)
            return
        if size == 0:
            self._watch(reading=False, writing=False)
            with contextlib.suppress(OSError):
                self.dst.shutdown(socket.SHUT_WR)
            self.done = True
            self.tunnel.pump_done()
        elif size > 0:
            self.count += size
            self.tunnel.active_at = self.tunnel.loop.time()
            self.on_writable()

    def on_writable(self) -> None:
        try:
            self._write()
        except BlockingIOError:
            if self.borrowed:
                self.pending, self.borrowed = memoryview(bytes(self.pending)), False
            self._watch(reading=False, writing=True)
            return
        except OSError as err:
            self.tunnel.fail(err)
            return
        self._watch(reading=True, writing=False)

    def stop(self) -> None:
        self._watch(reading=False, writing=False)
        if self.pipe is not None:
            for fd in self.pipe:
                os.close(fd)
            self.pipe = None


class Tunnel:
    """Both directions between ``client`` and ``upstream``, until both end, or idle or lifetime ends them."""

    def __init__(self, client: socket.socket, upstream: socket.socket, *, idle: float, deadline: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.client, self.upstream = client, upstream
        self.idle, self.deadline = idle, deadline
        self.active_at = self.loop.time()
        self.ended_by = ""
        self.done: asyncio.Future[str] = self.loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._pumps: tuple[_Pump, _Pump] | None = None

    @property
    def up(self) -> int:
        """Bytes passed from the client upstream."""
        return self._pumps[0].count if self._pumps else 0

    @property
    def down(self) -> int:
        return self._pumps[1].count if self._pumps else 0

    def start(self, limit: BodyLimit | None = None) -> None:
        """Start both pumps; ``limit`` frames the client's request body (it is copied, not spliced)."""
        self._pumps = (_Pump(self, self.client, self.upstream, limit), _Pump(self, self.upstream, self.client, None))
        for pump in self._pumps:
            pump.begin()
        self._arm()

    def pump_done(self) -> None:
        if self._pumps is not None and all(pump.done for pump in self._pumps):
            self.end("closed")

    def fail(self, err: OSError) -> None:
        self.end("closed" if err.errno in _GONE else f"closed: {err.strerror or err}")

    def end(self, why: str) -> None:
        """Stop moving bytes (the caller closes the sockets); ``done`` then holds ``why``."""
        if self.done.done():
            return
        self.ended_by = why
        if self._timer is not None:
            self._timer.cancel()
        for pump in self._pumps or ():
            pump.stop()
        self.done.set_result(why)

    def _arm(self) -> None:
        if not self.done.done():
            self._timer = self.loop.call_at(min(self.deadline, self.active_at + self.idle), self._check)

    def _check(self) -> None:
        now = self.loop.time()
        if now >= self.deadline:
            self.end("lifetime")
        elif now >= self.active_at + self.idle:
            self.end("idle")
        else:
            self._arm()
