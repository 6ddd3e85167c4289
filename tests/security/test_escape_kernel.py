"""Escape attempts through the kernel: sockets to the host, mounts, namespaces, keyrings, devices."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.attack import Attacker
from tests.tools import IN_CI

pytestmark = pytest.mark.sandbox

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
SIGCHLD = 17


def test_unix_sockets_cannot_be_created(attacker: Attacker) -> None:
    """The attacker creates an AF_UNIX socket, the way to a host socket such as docker.sock or the egress proxy."""
    outcomes = attacker.attempts("socket.socket(socket.AF_UNIX)", "socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)")
    assert outcomes == ["EPERM", "EPERM"]


@pytest.fixture
def host_unix_server(workspace: Path) -> Iterator[tuple[Path, socket.socket]]:
    """A host service listening on a unix socket inside the workspace (as a relay or docker.sock would be)."""
    path = workspace / "host.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()
        server.setblocking(False)
        yield path, server


def test_unix_socket_rule_holds_with_garbage_in_the_upper_bits(
    attacker: Attacker, host_unix_server: tuple[Path, socket.socket]
) -> None:
    """The attacker calls socket() with AF_UNIX in the low 32 bits of the family and garbage above them: the
    kernel reads only an int, so a filter comparing all 64 bits would let it through to a host socket."""
    path, server = host_unix_server
    setup = f"""
        def connect(family):
            fd = check(libc.syscall(NR['socket'], ctypes.c_long(family), socket.SOCK_STREAM, 0))
            socket.socket(fileno=fd).connect({str(path)!r})
    """
    outcomes = attacker.evaluate(
        "[outcome(lambda: connect(1 | 1 << 32)), outcome(lambda: connect(1 | 0xFFFFFFFF << 32))]", setup=setup
    )
    assert outcomes == ["EPERM", "EPERM"]
    with pytest.raises(BlockingIOError):
        server.accept()  # no connection ever arrived


def test_socketpair_still_works(attacker: Attacker) -> None:
    """Documented allowance: socketpair(AF_UNIX) connects to nothing outside, and Node and libuv need it."""
    setup = "left, right = socket.socketpair(); left.sendall(b'ping')"
    assert attacker.evaluate("[left.family == socket.AF_UNIX, right.recv(4).decode()]", setup=setup) == [True, "ping"]


def test_mount_is_denied(attacker: Attacker) -> None:
    """The attacker mounts a tmpfs over the workspace and unmounts /proc."""
    outcomes = attacker.attempts(
        "check(libc.mount(b'none', b'.', b'tmpfs', 0, None))", "check(libc.umount2(b'/proc', 2))"
    )
    assert outcomes == ["EPERM", "EPERM"]


def test_mount_command_fails(attacker: Attacker) -> None:
    """The attacker runs mount(8), a setuid-root program, to mount a tmpfs."""
    result = attacker.run("mount", "-t", "tmpfs", "none", "/tmp")
    assert (result.exit_code, result.reason) == (32, "exited")
    assert result.stderr.startswith(b"mount: /tmp: must be superuser to use mount.")


def test_unshare_command_fails(attacker: Attacker) -> None:
    """The attacker runs `unshare -r` to become root in a new user namespace."""
    result = attacker.run("unshare", "-r", "true")
    assert (result.exit_code, result.stderr) == (1, b"unshare: unshare failed: Operation not permitted\n")


def test_unshare_is_denied(attacker: Attacker) -> None:
    """The attacker calls unshare(CLONE_NEWUSER) and unshare(CLONE_NEWNS) itself."""
    outcomes = attacker.attempts(f"check(libc.unshare({CLONE_NEWUSER}))", f"check(libc.unshare({CLONE_NEWNS}))")
    assert outcomes == ["EPERM", "EPERM"]


def test_clone_into_a_new_user_namespace_is_denied(attacker: Attacker) -> None:
    """The attacker forks with clone(CLONE_NEWUSER), and tries clone3, whose flags a filter cannot read."""
    setup = f"""
        def clone():
            pid = check(libc.syscall(NR['clone'], {CLONE_NEWUSER | SIGCHLD}, None, None, None, None))
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
    """
    result = attacker.evaluate(
        "[outcome(clone), outcome(lambda: check(libc.syscall(NR['clone3'], None, 0)))]", setup=setup
    )
    assert result == ["EPERM", "ENOSYS"]  # ENOSYS makes libc fall back to clone, which the filter can read


def test_chroot_is_denied(attacker: Attacker) -> None:
    """The attacker chroots, the first step of the classic chroot breakout."""
    assert attacker.attempt("os.chroot('/tmp')") == "EPERM"


def test_hostname_cannot_be_changed(attacker: Attacker) -> None:
    """The attacker sets the hostname."""
    assert attacker.evaluate("[outcome(lambda: check(libc.sethostname(b'evil', 4))), socket.gethostname()]") == [
        "EPERM",
        "corral",
    ]


def test_kernel_keyring_is_denied(attacker: Attacker) -> None:
    """The attacker reads its session keyring (keyctl) and adds a key (add_key); the keyring is shared with the host."""
    keyctl = "check(libc.syscall(NR['keyctl'], 0, -3, 0, 0, 0))"  # KEYCTL_GET_KEYRING_ID of the session keyring
    add_key = "check(libc.syscall(NR['add_key'], b'user', b'x', b'y', 1, -3))"
    assert attacker.attempts(keyctl, add_key) == ["EPERM", "EPERM"]


def test_io_uring_is_unavailable(attacker: Attacker) -> None:
    """The attacker sets up an io_uring, whose operations would bypass the socket rules."""
    setup = "params = ctypes.create_string_buffer(120)"
    assert (
        attacker.evaluate("outcome(lambda: check(libc.syscall(NR['io_uring_setup'], 8, params)))", setup=setup)
        == "ENOSYS"
    )


def test_terminal_input_injection_is_denied(attacker: Attacker) -> None:
    """The attacker pushes characters into a terminal's input with TIOCSTI (also with garbage in the upper bits)."""
    setup = """
        import fcntl, termios
        read_end, _ = os.pipe()
        pty = os.open('/dev/ptmx', os.O_RDWR | os.O_NOCTTY)
    """
    result = attacker.evaluate(
        "[outcome(lambda: fcntl.ioctl(read_end, termios.TIOCSTI, b'x')),"
        " outcome(lambda: fcntl.ioctl(pty, termios.TIOCSTI, b'x')),"
        " outcome(lambda: check(libc.syscall(NR['ioctl'], pty, ctypes.c_long(1 << 32 | termios.TIOCSTI), b'x'))),"
        " outcome(lambda: fcntl.ioctl(read_end, termios.TIOCGWINSZ, bytes(8)))]",
        setup=setup,
    )
    assert result == ["EPERM", "EPERM", "EPERM", "ENOTTY"]  # the filter answers before the kernel can say "not a tty"


def test_device_nodes_cannot_be_made(attacker: Attacker) -> None:
    """The attacker makes /dev/mem-like and disk-like device nodes of its own."""
    outcomes = attacker.attempts(
        "os.mknod('/tmp/mem', 0o600 | stat.S_IFCHR, os.makedev(1, 1))",
        "os.mknod('disk', 0o600 | stat.S_IFBLK, os.makedev(254, 0))",
    )
    assert outcomes == ["EPERM", "EPERM"]


def test_host_devices_and_kernel_memory_are_absent(attacker: Attacker) -> None:
    """The attacker opens /dev/mem, /dev/kmem, /proc/kcore and looks for any block device."""
    kcore = "EACCES" if Path("/proc/kcore").exists() else "ENOENT"  # present or not as on the host; never readable
    setup = "blocks = [n for n in os.listdir('/dev') if stat.S_ISBLK(os.lstat('/dev/' + n).st_mode)]"
    result = attacker.evaluate(
        "[outcome(lambda: open('/dev/mem', 'rb')), outcome(lambda: open('/dev/kmem', 'rb')),"
        " outcome(lambda: open('/proc/kcore', 'rb')), blocks]",
        setup=setup,
    )
    assert result == ["ENOENT", "ENOENT", kcore, []]


def test_host_cgroups_and_sysfs_are_absent(attacker: Attacker) -> None:
    """The attacker opens the host's cgroup files (release_agent, its own limits) under /sys."""
    outcomes = attacker.attempts(
        "os.listdir('/sys')",
        "open('/sys/fs/cgroup/memory/release_agent', 'w')",
        "check(libc.mount(b'cgroup', b'/tmp', b'cgroup', 0, b'memory'))",
    )
    # docker: /sys is an empty read-only tmpfs
    assert outcomes == attacker.on(bwrap=["ENOENT", "ENOENT", "EPERM"], docker=["ok", "ENOENT", "EPERM"])


def test_file_handle_open_is_denied(attacker: Attacker) -> None:
    """The attacker opens a file by handle (open_by_handle_at), the "shocker" escape from a bind mount."""
    setup = "handle = ctypes.create_string_buffer(bytes([8, 0, 0, 0, 1, 0, 0, 0]) + bytes(8))"
    assert (
        attacker.evaluate(
            "outcome(lambda: check(libc.syscall(NR['open_by_handle_at'], os.open('/', os.O_RDONLY), handle, 0)))",
            setup=setup,
        )
        == "EPERM"
    )


def test_kernel_attack_surface_is_denied(attacker: Attacker) -> None:
    """The attacker loads a BPF program and opens a perf event, two common kernel exploit entry points."""
    outcomes = attacker.attempts(
        "check(libc.syscall(NR['bpf'], 5, None, 0))", "check(libc.syscall(NR['perf_event_open'], None, 0, -1, -1, 0))"
    )
    assert outcomes == ["EPERM", "EPERM"]


@pytest.mark.parametrize(
    "machine_code",
    [
        # push rbx; mov eax, 20 (getpid); int 0x80; pop rbx; ret
        pytest.param("53 b8 14 00 00 00 cd 80 5b c3", id="i386"),
        # mov eax, 0x40000000 | 272 (unshare); mov edi, CLONE_NEWUSER; syscall; ret
        pytest.param("b8 10 01 00 40 bf 00 00 00 10 0f 05 c3", id="x32"),
    ],
)
def test_other_syscall_abis_are_killed(attacker: Attacker, machine_code: str) -> None:
    """The attacker makes syscalls through another ABI, whose numbers the filter's x86_64 rules do not match."""
    if os.uname().machine != "x86_64":
        if IN_CI:
            pytest.fail("CI runs on x86_64; this machine code is for x86_64")
        pytest.skip("x86_64 machine code")
    code = f"""
        import mmap
        page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        page.write(bytes.fromhex({machine_code!r}))
        call = ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
        print('returned', call(), flush=True)
    """
    result = attacker.python(code)
    assert (result.exit_code, result.signal_name, result.reason, result.stdout) == (159, "SIGSYS", "exited", b"")
