"""The hash-chained audit log: what it writes, and every kind of tampering ``verify`` catches."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
from pathlib import Path

import pytest

from corral.egress.audit import FIELDS, ZERO_HASH, AuditLog, AuditRecord, Checkpoint, verify
from corral.errors import AuditLogError


def record(n: int, verdict: str = "allow") -> AuditRecord:
    return AuditRecord(
        sandbox="sb-1",
        host=f"host{n}.example.com",
        port=443,
        verdict="allow" if verdict == "allow" else "deny",
        reason=f"reason {n}",
        rule="*.example.com",
        address="93.184.216.34",
        bytes_up=n,
        bytes_down=2 * n,
        duration=0.5,
    )


def write_log(path: Path, count: int = 5) -> Checkpoint:
    with AuditLog(path) as log:
        for n in range(count):
            log.append(record(n, "allow" if n % 2 else "deny"))
        return log.checkpoint()


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_lines_carry_every_field_and_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    with AuditLog(path) as log:
        log.append(AuditRecord("sb", "a.example", 443, "deny", "not allowed", time=when))
        log.append(record(1))
    raw = lines(path)
    first, second = (json.loads(line) for line in raw)
    assert list(first) == list(FIELDS)
    assert first == {
        "time": "2026-01-02T03:04:05.678Z",
        "sandbox": "sb",
        "host": "a.example",
        "port": 443,
        "address": None,
        "verdict": "deny",
        "rule": None,
        "reason": "not allowed",
        "bytes_up": 0,
        "bytes_down": 0,
        "duration": 0.0,
        "prev": ZERO_HASH,
    }
    assert second["prev"] == hashlib.sha256(raw[0].rstrip(b"\n")).hexdigest()
    assert second["time"].endswith("Z")
    dt.datetime.fromisoformat(second["time"].replace("Z", "+00:00"))
    assert verify(path) == []


def test_checkpoint_file_tracks_the_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    checkpoint = write_log(path, 3)
    raw = lines(path)
    assert checkpoint == Checkpoint(path.stat().st_size, 3, hashlib.sha256(raw[-1].rstrip(b"\n")).hexdigest())
    assert Checkpoint.decode((tmp_path / "audit.jsonl.head").read_bytes()) == checkpoint
    assert verify(path, checkpoint) == []


def test_reopening_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 2)
    with AuditLog(path) as log:
        assert log.checkpoint().lines == 2
        log.append(record(9))
    assert len(lines(path)) == 3
    assert verify(path) == []


def test_appends_from_many_threads_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:

        def work() -> None:
            for n in range(200):
                log.append(record(n))

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert log.checkpoint().lines == 1600
    assert verify(path) == []


def rewrite(path: Path, new_lines: list[bytes]) -> None:
    path.write_bytes(b"".join(new_lines))


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        ("edit-middle", ["Line 3 does not follow line 2"]),
        ("edit-first", ["Line 2 does not follow line 1", "do not end at a line"]),
        ("remove-middle", ["Line 2 does not follow line 1", "lines were removed from its end"]),
        ("remove-first", ["Line 1 does not start the chain", "lines were removed from its end"]),
        ("insert", ["Line 3 does not follow line 2", "do not end at a line"]),
        ("reorder", ["Line 2 does not follow line 1", "Line 3 does not follow line 2", "Line 4 does not follow"]),
        ("edit-last", ["do not end at a line"]),
        ("remove-last", ["lines were removed from its end"]),
        ("cut-mid-line", ["Line 5 is incomplete", "Line 5 is not valid JSON", "lines were removed from its end"]),
        ("garbage", ["Line 3 is not valid JSON", "Line 4 does not follow line 3", "lines were removed from its end"]),
    ],
)
def test_verify_catches_tampering(tmp_path: Path, tamper: str, expected: list[str]) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 5)
    raw = lines(path)
    if tamper == "edit-middle":
        raw[1] = raw[1].replace(b'"reason 1"', b'"reason X"')
    elif tamper == "edit-first":
        raw[0] = raw[0].replace(b'"deny"', b'"allow"')
    elif tamper == "remove-middle":
        del raw[1]
    elif tamper == "remove-first":
        del raw[0]
    elif tamper == "insert":
        raw.insert(2, raw[1])
    elif tamper == "reorder":
        raw[1], raw[2] = raw[2], raw[1]
    elif tamper == "edit-last":
        raw[-1] = raw[-1].replace(b'"reason 4"', b'"reason 44"')
    elif tamper == "remove-last":
        del raw[-1]
    elif tamper == "cut-mid-line":
        raw[-1] = raw[-1][:20]
    elif tamper == "garbage":
        raw[2] = b"not json\n"
    rewrite(path, raw)
    problems = verify(path)
    for fragment in expected:
        assert any(fragment in problem for problem in problems), (fragment, problems)
    assert len(problems) == len(expected), problems


def test_an_edited_last_line_of_the_same_length_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    raw = lines(path)
    raw[-1] = raw[-1].replace(b'"reason 2"', b'"reason 7"')
    rewrite(path, raw)
    assert verify(path) == [
        "Line 3, the last one the checkpoint file audit.jsonl.head vouches for, does not match it: it was edited."
    ]


def test_without_the_checkpoint_file_removal_of_the_end_is_undetectable_and_said_so(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    (tmp_path / "audit.jsonl.head").unlink()
    rewrite(path, lines(path)[:-1])
    assert verify(path) == [
        f"The checkpoint file {path}.head is missing, so lines removed from the end cannot be detected."
    ]


def test_a_rewritten_checkpoint_file_is_caught_by_a_checkpoint_kept_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    kept = write_log(path, 4)
    raw = lines(path)[:-1]
    rewrite(path, raw)
    forged = Checkpoint(sum(map(len, raw)), 3, hashlib.sha256(raw[-1].rstrip(b"\n")).hexdigest())
    (tmp_path / "audit.jsonl.head").write_bytes(forged.encode())
    assert verify(path) == []  # the chain and the (forged) checkpoint file agree: honestly undetectable
    assert verify(path, kept) == [
        f"The log has {forged.size} bytes but the given checkpoint vouches for {kept.size}: "
        "lines were removed from its end."
    ]


def test_a_log_that_grew_after_a_checkpoint_still_verifies_against_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    kept = write_log(path, 2)
    with AuditLog(path) as log:
        log.append(record(7))
    assert verify(path, kept) == []


def test_verify_reports_a_missing_log_and_a_forged_checkpoint_file(tmp_path: Path) -> None:
    assert verify(tmp_path / "none.jsonl") == [f"The audit log {tmp_path / 'none.jsonl'} does not exist."]
    path = tmp_path / "audit.jsonl"
    write_log(path, 1)
    (tmp_path / "audit.jsonl.head").write_text("garbage\n")
    assert verify(path) == [f"The checkpoint file {path}.head is not a valid checkpoint (it was edited)."]


def test_the_writer_refuses_to_continue_a_tampered_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    rewrite(path, lines(path)[:-1])
    with pytest.raises(AuditLogError, match="does not match its checkpoint"):
        AuditLog(path)
    (tmp_path / "audit.jsonl.head").unlink()
    with pytest.raises(AuditLogError, match="has no valid checkpoint file"):
        AuditLog(path)


def test_the_writer_drops_a_torn_write_after_its_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 2)
    with path.open("ab") as log:
        log.write(b'{"time":"2026-01-01T00:00:00.000Z","sand')  # a crash in the middle of a write
    with AuditLog(path) as log:
        assert log.checkpoint().lines == 2
        log.append(record(3))
    assert verify(path) == []


def test_the_writer_accepts_a_line_written_just_before_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 2)
    side = tmp_path / "audit.jsonl.head"
    before = side.read_bytes()
    with AuditLog(path) as log:
        log.append(record(3))
    side.write_bytes(before)  # the line reached the disk, the checkpoint did not
    with AuditLog(path) as log:
        assert log.checkpoint().lines == 3
    assert verify(path) == []


@pytest.mark.parametrize("where", ["directory", "under-a-file", "missing-directory"])
def test_an_unwritable_path_is_an_audit_log_error(tmp_path: Path, where: str) -> None:
    (tmp_path / "file").write_text("x")
    path = {
        "directory": tmp_path,
        "under-a-file": tmp_path / "file" / "audit.jsonl",
        "missing-directory": tmp_path / "no" / "audit.jsonl",
    }[where]
    with pytest.raises(AuditLogError, match=r"^Cannot open the audit log .* for appending \(.+\); choose a writable"):
        AuditLog(path)


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path), pytest.raises(AuditLogError, match="already open in another process"):
        AuditLog(path)
    AuditLog(path).close()  # free again once the first is closed


def test_appending_to_a_closed_log_is_an_error(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.close()
    with pytest.raises(AuditLogError, match="is closed"):
        log.append(record(1))
