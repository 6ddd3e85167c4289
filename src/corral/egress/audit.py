"""The append-only, hash-chained JSONL audit log of egress decisions.

Each line is one JSON object (keys in ``FIELDS`` order, ASCII only) and carries ``prev``: the
sha256 of the previous line's bytes without its newline, 64 zeros on the first line. Next to
``audit.jsonl`` the writer keeps ``audit.jsonl.head``, a checkpoint rewritten in place after
every line: the log's size in bytes, its line count and the hash of its last line.

What ``verify`` can honestly detect:

- an edited, inserted, removed or reordered line anywhere, by a tamperer who does not recompute
  the hashes that follow it (the chain breaks at the next line);
- the last lines removed or the last line edited, through the checkpoint file (the chain alone
  cannot see the end of the log);
- nothing, against a tamperer who rewrites the chain *and* the checkpoint file. For that, store
  ``AuditLog.checkpoint()`` somewhere the sandbox host cannot rewrite (the job store) and pass it
  to ``verify``: the log must still start with exactly the bytes it vouches for.

The writer takes an exclusive ``flock`` on the checkpoint file, so two processes never interleave
chains, and refuses to continue a log that does not match its checkpoint: it never blesses a
tampered log by writing a fresh checkpoint over it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fcntl
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Literal

from corral.errors import AuditLogError

__all__ = ["FIELDS", "ZERO_HASH", "AuditLog", "AuditRecord", "Checkpoint", "verify"]

ZERO_HASH = "0" * 64
FIELDS = (
    "time",
    "sandbox",
    "host",
    "port",
    "address",
    "verdict",
    "rule",
    "reason",
    "bytes_up",
    "bytes_down",
    "duration",
    "prev",
)
_MAX_PROBLEMS = 100
_TAIL_LIMIT = 1 << 20


@dataclasses.dataclass(frozen=True)
class AuditRecord:
    """One egress decision and what followed it: how much went each way and for how long."""

    sandbox: str
    host: str
    port: int
    verdict: Literal["allow", "deny"]
    reason: str
    rule: str | None = None
    address: str | None = None
    """The address dialed (or refused) after DNS; none when the name was denied."""
    bytes_up: int = 0
    bytes_down: int = 0
    duration: float = 0.0
    """Seconds from the client's connection to its end."""
    time: _dt.datetime | None = None
    """When the decision was made (UTC); default the moment it is appended."""

    def to_line(self, prev: str) -> bytes:
        when = self.time or _dt.datetime.now(_dt.UTC)
        stamp = when.astimezone(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        values = {
            "time": stamp,
            "sandbox": self.sandbox,
            "host": self.host,
            "port": self.port,
            "address": self.address,
            "verdict": self.verdict,
            "rule": self.rule,
            "reason": self.reason,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "duration": round(self.duration, 6),
            "prev": prev,
        }
        return json.dumps(values, ensure_ascii=True, separators=(",", ":")).encode()


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """The first ``size`` bytes of a log: ``lines`` lines, the last of which hashes to ``head``."""

    size: int = 0
    lines: int = 0
    head: str = ZERO_HASH

    def encode(self) -> bytes:
        """A fixed-length record, so rewriting it in place never leaves a stale tail."""
        return f"{self.size:020d} {self.lines:020d} {self.head}\n".encode()

    @classmethod
    def decode(cls, data: bytes) -> Checkpoint | None:
        fields = data.decode("ascii", "replace").split()
        if len(fields) != 3 or not (fields[0].isdigit() and fields[1].isdigit() and len(fields[2]) == 64):
            return None
        return cls(int(fields[0]), int(fields[1]), fields[2])


def checkpoint_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def _digest(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _last_line(fd: int, end: int) -> bytes | None:
    """The line that ends (with its newline) at byte ``end`` of ``fd``, without the newline."""
    stop = end - 1
    if os.pread(fd, 1, stop) != b"\n":
        return None
    pos = stop
    while pos > 0:
        size = min(pos, 65536)
        block = os.pread(fd, size, pos - size)
        cut = block.rfind(b"\n")
        if cut >= 0:
            start = pos - size + cut + 1
            return os.pread(fd, stop - start, start)
        pos -= size
    return os.pread(fd, stop, 0)


def _hash_at(fd: int, end: int) -> str | None:
    line = _last_line(fd, end)
    return None if line is None else _digest(line)


class AuditLog:
    """An open audit log; ``append`` is safe from any thread."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        side = checkpoint_path(self.path)
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            msg = f"Cannot open the audit log {self.path} for appending ({err.strerror}); choose a writable file path."
            raise AuditLogError(msg) from err
        try:
            self._side = os.open(side, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            os.close(self._fd)
            msg = f"Cannot open the audit checkpoint {side} ({err.strerror}); make its directory writable."
            raise AuditLogError(msg) from err
        try:
            fcntl.flock(self._side, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._state = self._recover()
        except BaseException as err:
            self.close()
            if isinstance(err, BlockingIOError):
                msg = f"The audit log {self.path} is already open in another process; give each proxy its own log."
                raise AuditLogError(msg) from err
            raise

    def _recover(self) -> Checkpoint:
        size = os.fstat(self._fd).st_size
        saved = Checkpoint.decode(os.pread(self._side, 256, 0))
        fix = f"run `verify` on it, move it aside and start a new log at {self.path}"
        if saved is None:
            if size:
                msg = f"The audit log {self.path} has no valid checkpoint file; {fix}."
                raise AuditLogError(msg)
            saved = Checkpoint()
        elif saved.size > size or (saved.size and _hash_at(self._fd, saved.size) != saved.head):
            msg = f"The audit log {self.path} does not match its checkpoint (it was cut or edited); {fix}."
            raise AuditLogError(msg)
        if size - saved.size > _TAIL_LIMIT:
            msg = f"The audit log {self.path} has more than 1 MiB after its checkpoint; {fix}."
            raise AuditLogError(msg)
        state, tail = saved, os.pread(self._fd, size - saved.size, saved.size)
        for line in tail.split(b"\n")[:-1]:  # lines written after the last checkpoint (a crash in between)
            try:
                prev = json.loads(line).get("prev")
            except (ValueError, AttributeError):
                prev = None
            if prev != state.head:
                msg = f"The audit log {self.path} has lines after its checkpoint that do not chain; {fix}."
                raise AuditLogError(msg)
            state = Checkpoint(state.size + len(line) + 1, state.lines + 1, _digest(line))
        if state.size != size:  # a torn last write beyond the checkpoint: drop the fragment
            os.ftruncate(self._fd, state.size)
        os.pwrite(self._side, state.encode(), 0)
        return state

    def checkpoint(self) -> Checkpoint:
        """What the log holds now; keep it elsewhere to detect a rewrite later (see ``verify``)."""
        with self._lock:
            return self._state

    def append(self, record: AuditRecord) -> Checkpoint:
        """Write one line and the checkpoint after it; raise ``AuditLogError`` when the disk refuses."""
        with self._lock:
            if self._fd < 0:
                msg = f"The audit log {self.path} is closed; open a new AuditLog to write to it."
                raise AuditLogError(msg)
            line = record.to_line(self._state.head)
            data = memoryview(line + b"\n")
            try:
                while data:
                    data = data[os.write(self._fd, data) :]
                state = Checkpoint(self._state.size + len(line) + 1, self._state.lines + 1, _digest(line))
                os.pwrite(self._side, state.encode(), 0)
            except OSError as err:
                msg = f"Cannot write to the audit log {self.path} ({err.strerror}); free space or fix its permissions."
                raise AuditLogError(msg) from err
            self._state = state
            return state

    def close(self) -> None:
        with self._lock:
            for fd in (self._fd, getattr(self, "_side", -1)):
                if fd >= 0:
                    os.close(fd)
            self._fd = self._side = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_line(number: int, raw: bytes, prev: str) -> list[str]:
    problems = []
    if not raw.endswith(b"\n"):
        problems.append(
            f"Line {number} is incomplete: it has no newline (a write was cut short or the end was edited)."
        )
    try:
        values = json.loads(raw)
    except ValueError:
        return [*problems, f"Line {number} is not valid JSON (it was edited or corrupted)."]
    if not isinstance(values, dict):
        return [*problems, f"Line {number} is not a JSON object (it was edited or corrupted)."]
    if values.get("prev") != prev:
        if number == 1:
            problems.append("Line 1 does not start the chain (its prev is not 64 zeros): lines were removed before it.")
        else:
            problems.append(
                f"Line {number} does not follow line {number - 1}: its prev is not the hash of line {number - 1} "
                f"(line {number - 1} was edited, or lines were inserted, removed or moved here)."
            )
    missing = [name for name in FIELDS if name not in values]
    if missing:
        problems.append(f"Line {number} lacks the fields {', '.join(missing)}.")
    elif values["verdict"] not in ("allow", "deny"):
        problems.append(f"Line {number} has the verdict {values['verdict']!r}; only allow and deny are written.")
    return problems


def verify(path: Path | str, checkpoint: Checkpoint | None = None) -> list[str]:
    """Problems found in the log at ``path`` (sentences; empty when intact).

    The log is checked against its checkpoint file and, when given, against ``checkpoint``
    (kept elsewhere earlier). A log that grew after a checkpoint is fine: appending is allowed.
    """
    path = Path(path)
    side = checkpoint_path(path)
    try:
        saved_bytes: bytes | None = side.read_bytes()
    except FileNotFoundError:
        saved_bytes = None
    except OSError as err:
        return [f"The audit checkpoint {side} cannot be read ({err.strerror})."]
    anchors = [] if checkpoint is None else [("the given checkpoint", checkpoint)]
    problems: list[str] = []
    if saved_bytes is not None:
        saved = Checkpoint.decode(saved_bytes)
        if saved is None:
            problems.append(f"The checkpoint file {side} is not a valid checkpoint (it was edited).")
        else:
            anchors.append((f"the checkpoint file {side.name}", saved))
    wanted = {anchor.size for _, anchor in anchors}
    seen: dict[int, tuple[int, str]] = {0: (0, ZERO_HASH)}
    prev, offset, number = ZERO_HASH, 0, 0
    try:
        with path.open("rb") as log:
            for raw in log:
                number += 1
                problems += _check_line(number, raw, prev)
                prev = _digest(raw.removesuffix(b"\n"))
                offset += len(raw)
                if offset in wanted:
                    seen[offset] = (number, prev)
    except FileNotFoundError:
        return [f"The audit log {path} does not exist."]
    except OSError as err:
        return [f"The audit log {path} cannot be read ({err.strerror})."]
    if saved_bytes is None and offset:
        problems.append(f"The checkpoint file {side} is missing, so lines removed from the end cannot be detected.")
    for name, anchor in anchors:
        if anchor.size > offset:
            problems.append(
                f"The log has {offset} bytes but {name} vouches for {anchor.size}: lines were removed from its end."
            )
        elif anchor.size not in seen:
            problems.append(f"The first {anchor.size} bytes, which {name} vouches for, do not end at a line: edited.")
        elif seen[anchor.size] != (anchor.lines, anchor.head):
            line = seen[anchor.size][0]
            problems.append(f"Line {line}, the last one {name} vouches for, does not match it: it was edited.")
    if len(problems) > _MAX_PROBLEMS:
        problems[_MAX_PROBLEMS:] = [f"... and {len(problems) - _MAX_PROBLEMS} more problems."]
    return problems
