"""The seccomp filter of the sandboxed command: its rules as data, compiled once to BPF.

The rules deny what a coding agent never needs and an escape always does: sockets of any family
but IPv4, IPv6 and netlink (AF_UNIX is the way to a host socket such as the egress proxy or a
container engine; AF_VSOCK reaches the hypervisor past the network namespace), io_uring (its
SOCKET op would bypass those rules), ptrace and cross-process memory access, mounts, new
namespaces, the kernel keyring, and terminal input injection. ``socketpair(AF_UNIX)`` stays
allowed: it connects to nothing outside, and Node and libuv use it for child-process pipes.

Arguments are compared as the full 64-bit register: the kernel reads a socket family as an int,
so garbage in the upper bits must not slip past an equality test. Families above netlink are
denied with one ``gt`` test, which also catches any value with upper bits set; the low
families other than IPv4, IPv6 and netlink are denied one by one.

Compiling needs libseccomp (through ``pyseccomp``), whose import alone costs tens of
milliseconds, so the BPF bytes are cached on disk keyed by the rules; bwrap loads them from an fd.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import zlib
from pathlib import Path
from typing import Literal

from corral.errors import SandboxUnavailableError

__all__ = ["DEFAULT_RULES", "GVISOR_RULES", "Rule", "cache_key", "compile_bpf", "engine_profile", "load_bpf"]

Op = Literal["eq", "gt", "masked_eq"]

AF_UNIX = 1  # socket.AF_UNIX, without importing socket on the start-up path
AF_INET, AF_INET6, AF_NETLINK = 2, 10, 16
ALLOWED_FAMILIES = (AF_INET, AF_INET6, AF_NETLINK)
CLONE_NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
TIOCSTI = 0x5412
TIOCLINUX = 0x541C


@dataclasses.dataclass(frozen=True)
class Rule:
    """Fail ``syscall`` with ``errno`` (when argument ``arg`` matches, if one is given)."""

    syscall: str
    errno: int = errno.EPERM
    arg: int | None = None
    op: Op = "eq"
    value: int = 0
    mask: int = 0
    why: str = ""


def _rules() -> tuple[Rule, ...]:
    deny = errno.EPERM
    rules = [
        Rule("socket", deny, 0, "eq", AF_UNIX, why="reach host sockets (proxy, docker.sock)"),
        *(
            Rule("socket", deny, 0, "eq", family, why="only IPv4, IPv6 and netlink sockets are needed")
            for family in range(AF_NETLINK)
            if family not in (AF_UNIX, *ALLOWED_FAMILIES)
        ),
        Rule("socket", deny, 0, "gt", AF_NETLINK, why="vsock, packet, alg and the rest; and upper-bit tricks"),
        Rule("socketpair", deny, 0, "gt", AF_UNIX, why="only AF_UNIX pairs are needed"),
        *(
            Rule(name, errno.ENOSYS, why="io_uring ops bypass socket rules")
            for name in ("io_uring_setup", "io_uring_enter", "io_uring_register")
        ),
        *(
            Rule(name, deny, why="inspect or control other processes")
            for name in ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd")
        ),
        *(
            Rule(name, deny, why="change the filesystem view")
            for name in (
                "mount",
                "umount2",
                "pivot_root",
                "chroot",
                "move_mount",
                "open_tree",
                "fsopen",
                "fsmount",
                "fsconfig",
                "fspick",
                "mount_setattr",
            )
        ),
        *(Rule(name, deny, why="enter or create namespaces") for name in ("unshare", "setns")),
        *(
            Rule("clone", deny, 0, "masked_eq", flag, flag, why=f"clone with {name}")
            for name, flag in CLONE_NAMESPACE_FLAGS.items()
        ),
        Rule("clone3", errno.ENOSYS, why="clone3 flags cannot be inspected; libc falls back to clone"),
        *(
            Rule(name, deny, why="the kernel keyring is shared with the host")
            for name in ("keyctl", "add_key", "request_key")
        ),
        *(
            Rule(name, deny, why="kernel attack surface")
            for name in (
                "bpf",
                "perf_event_open",
                "userfaultfd",
                "kexec_load",
                "kexec_file_load",
                "init_module",
                "finit_module",
                "delete_module",
                "open_by_handle_at",
                "swapon",
                "swapoff",
                "reboot",
                "acct",
                "quotactl",
                "syslog",
                "uselib",
                "vhangup",
            )
        ),
        Rule("ioctl", deny, 1, "masked_eq", TIOCSTI, 0xFFFFFFFF, why="inject input into a terminal"),
        Rule("ioctl", deny, 1, "masked_eq", TIOCLINUX, 0xFFFFFFFF, why="inject input into a console"),
    ]
    return tuple(rules)


DEFAULT_RULES: tuple[Rule, ...] = _rules()

GVISOR_RULES: tuple[Rule, ...] = tuple(
    r for r in DEFAULT_RULES if (r.syscall, r.op, r.value) != ("socket", "eq", AF_UNIX)
)
"""The rules inside gVisor: AF_UNIX sockets are allowed there, because the relay inside reaches the
proxy socket mounted in through one. gVisor's own kernel serves them, and the only host socket in
reach is that proxy's, which applies the same policy as the relay."""


def compile_bpf(rules: tuple[Rule, ...] = DEFAULT_RULES) -> bytes:
    """Compile the rules to a BPF program for this machine's architecture (default: allow)."""
    try:
        import pyseccomp as sc
    except (ImportError, RuntimeError) as err:  # RuntimeError: libseccomp.so missing
        msg = f"seccomp filters cannot be built ({err}); install libseccomp2 and the pyseccomp package."
        raise SandboxUnavailableError(msg) from None
    ops = {"eq": sc.EQ, "gt": sc.GT, "masked_eq": sc.MASKED_EQ}
    filt = sc.SyscallFilter(defaction=sc.ALLOW)
    for rule in rules:
        if rule.arg is None:
            filt.add_rule(sc.ERRNO(rule.errno), rule.syscall)
        elif rule.op == "masked_eq":
            filt.add_rule(sc.ERRNO(rule.errno), rule.syscall, sc.Arg(rule.arg, ops[rule.op], rule.mask, rule.value))
        else:
            filt.add_rule(sc.ERRNO(rule.errno), rule.syscall, sc.Arg(rule.arg, ops[rule.op], rule.value))
    fd = os.memfd_create("corral-seccomp", os.MFD_CLOEXEC)
    try:
        filt.export_bpf(_Fd(fd))
        size = os.lseek(fd, 0, os.SEEK_CUR)
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


ENGINE_ARCHES = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}
ENGINE_OPS = {"eq": "SCMP_CMP_EQ", "gt": "SCMP_CMP_GT", "masked_eq": "SCMP_CMP_MASKED_EQ"}


def engine_profile(rules: tuple[Rule, ...] = DEFAULT_RULES) -> dict[str, object]:
    """The rules as a container engine's seccomp profile (the JSON of ``--security-opt seccomp=``).

    Only the native architecture is listed, as ``compile_bpf`` does: a system call through another
    ABI (i386, x32) fails as a foreign architecture. Several argument tests of one system call are
    separate entries, so each is a rule of its own (in one entry they would all have to match).
    """
    entries: list[dict[str, object]] = []
    for rule in rules:
        entry: dict[str, object] = {"names": [rule.syscall], "action": "SCMP_ACT_ERRNO", "errnoRet": rule.errno}
        if rule.arg is not None:
            value, two = (rule.mask, rule.value) if rule.op == "masked_eq" else (rule.value, 0)
            entry["args"] = [{"index": rule.arg, "value": value, "valueTwo": two, "op": ENGINE_OPS[rule.op]}]
        entries.append(entry)
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": [ENGINE_ARCHES.get(os.uname().machine, "SCMP_ARCH_NATIVE")],
        "syscalls": entries,
    }


class _Fd:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd


def cache_key(rules: tuple[Rule, ...]) -> str:
    text = repr((rules, os.uname().machine, os.uname().release))
    return f"{zlib.crc32(text.encode()):08x}"


def load_bpf(cache_dir: Path, rules: tuple[Rule, ...] = DEFAULT_RULES) -> bytes:
    """The compiled filter, from the cache under ``cache_dir`` or compiled now and cached."""
    path = cache_dir / f"seccomp-{cache_key(rules)}.bpf"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    import tempfile  # only on a cache miss: its import is slow

    program = compile_bpf(rules)
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".seccomp-")  # unique: threads may compile at once
    with os.fdopen(fd, "wb") as out:
        out.write(program)
    Path(tmp).replace(path)
    return program
