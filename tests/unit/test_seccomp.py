"""The seccomp rules as data, and their compilation."""

import errno
import socket
from pathlib import Path

from corral.sandbox import seccomp
from corral.sandbox.seccomp import DEFAULT_RULES, Rule


def rules_for(name: str) -> list[Rule]:
    return [rule for rule in DEFAULT_RULES if rule.syscall == name]


def test_only_inet_inet6_and_netlink_sockets_can_be_made() -> None:
    """Every family from 0 up is denied by some rule, except the three an agent needs."""
    rules = rules_for("socket")
    assert all(rule.arg == 0 and rule.errno == errno.EPERM for rule in rules)

    def denied(family: int) -> bool:
        return any((r.op == "eq" and family == r.value) or (r.op == "gt" and family > r.value) for r in rules)

    assert [f for f in range(64) if not denied(f)] == [socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK]
    assert denied(socket.AF_UNIX)
    assert denied(socket.AF_VSOCK)
    assert denied((1 << 32) | socket.AF_UNIX)  # the kernel reads an int; upper bits must not help
    assert seccomp.AF_UNIX == socket.AF_UNIX


def test_socketpair_is_allowed_for_af_unix_only() -> None:
    (rule,) = rules_for("socketpair")
    assert (rule.op, rule.value) == ("gt", socket.AF_UNIX)


def test_escape_syscalls_are_denied() -> None:
    for name in (
        "ptrace",
        "mount",
        "umount2",
        "unshare",
        "setns",
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "process_vm_readv",
        "pivot_root",
        "chroot",
        "open_by_handle_at",
    ):
        (rule,) = rules_for(name)
        assert rule.arg is None
        assert rule.errno == errno.EPERM


def test_io_uring_and_clone3_report_enosys_so_callers_fall_back() -> None:
    for name in ("io_uring_setup", "io_uring_enter", "io_uring_register", "clone3"):
        (rule,) = rules_for(name)
        assert rule.errno == errno.ENOSYS


def test_clone_with_any_namespace_flag_is_denied() -> None:
    flags = {rule.value for rule in rules_for("clone")}
    assert flags == set(seccomp.CLONE_NAMESPACE_FLAGS.values())
    assert all(rule.op == "masked_eq" and rule.mask == rule.value and rule.arg == 0 for rule in rules_for("clone"))


def test_terminal_injection_is_denied() -> None:
    assert {rule.value for rule in rules_for("ioctl")} == {seccomp.TIOCSTI, seccomp.TIOCLINUX}


def test_every_rule_says_why() -> None:
    assert all(rule.why for rule in DEFAULT_RULES)


def test_compiles_to_bpf_and_caches(tmp_path: Path) -> None:
    program = seccomp.compile_bpf()
    assert len(program) % 8 == 0  # struct sock_filter is 8 bytes
    assert len(program) > 8 * len(DEFAULT_RULES)
    assert seccomp.load_bpf(tmp_path) == program
    (cached,) = tmp_path.glob("seccomp-*.bpf")
    cached.write_bytes(b"\0" * 8)  # a cache hit reads the file, it does not recompile
    assert seccomp.load_bpf(tmp_path) == b"\0" * 8


def test_cache_key_follows_the_rules() -> None:
    other = (*DEFAULT_RULES, Rule("acct"))
    assert seccomp.cache_key(other) != seccomp.cache_key(DEFAULT_RULES)


def test_threads_compiling_at_once_share_one_cache(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        programs = list(pool.map(lambda _: seccomp.load_bpf(tmp_path), range(8)))
    assert len(set(programs)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [f"seccomp-{seccomp.cache_key(DEFAULT_RULES)}.bpf"]
