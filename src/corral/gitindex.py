"""A git index's stat data, rewritten without re-hashing the files it describes.

``update-index --refresh`` after a change of owner, mode or mtime reads and hashes every file
again to learn that its content did not change. Where that is known (a tree just written from
the index's own entries), ``restat`` writes the new stat data into the entries directly: ctime,
mtime, dev, ino, uid, gid and size as ``lstat`` gives them (truncated to 32 bits, as git stores
them), everything else (the object ids, flags, paths, extensions) kept byte for byte, and the
trailing SHA-1 checksum computed again.

Only index versions 2 and 3 of a SHA-1 repository are rewritten (what ``read-tree`` writes
unless configured otherwise); anything else is a ``ValueError``, for the caller to fall back on
``update-index --refresh``.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable

__all__ = ["restat"]

HEADER = struct.Struct(">4sLL")
STAT = struct.Struct(">10L")
"""ctime s, ns; mtime s, ns; dev; ino; mode; uid; gid; size."""
OID = 20
EXTENDED = 0x4000
MASK = 0xFFFFFFFF


def restat(data: bytes, stat_of: Callable[[bytes], os.stat_result]) -> bytes:
    """``data`` (an index file) with each entry's stat data taken from ``stat_of(path)``."""
    if len(data) < HEADER.size + OID or hashlib.sha1(data[:-OID]).digest() != data[-OID:]:
        msg = "The index is not a SHA-1 git index, or its checksum does not match."
        raise ValueError(msg)
    signature, version, count = HEADER.unpack_from(data)
    if signature != b"DIRC" or version not in (2, 3):
        msg = f"The index is version {version}; only versions 2 and 3 are rewritten."
        raise ValueError(msg)
    out = bytearray(data[:-OID])
    offset = HEADER.size
    for _ in range(count):
        fields = STAT.unpack_from(data, offset)
        (flags,) = struct.unpack_from(">H", data, offset + STAT.size + OID)
        start = offset + STAT.size + OID + 2 + (2 if flags & EXTENDED else 0)
        end = data.index(b"\0", start)
        info = stat_of(data[start:end])
        new = (
            int(info.st_ctime) & MASK,
            info.st_ctime_ns % 1_000_000_000,
            int(info.st_mtime) & MASK,
            info.st_mtime_ns % 1_000_000_000,
            info.st_dev & MASK,
            info.st_ino & MASK,
            fields[6],  # git's mode (100644, 100755, 120000, 160000), not the file system's
            info.st_uid & MASK,
            info.st_gid & MASK,
            info.st_size & MASK,
        )
        STAT.pack_into(out, offset, *new)
        offset += (start - offset + end - start + 8) & ~7  # the entry, NUL-padded to a multiple of 8
    if offset > len(data) - OID:
        msg = f"The index's {count} entries run past its end; it is not one git wrote."
        raise ValueError(msg)
    return bytes(out) + hashlib.sha1(out).digest()
