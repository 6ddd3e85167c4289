"""Escape attempts through other processes and privileges: see, signal, trace, become root."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.sandbox.bwrap import BwrapSandbox
from corral.sandbox.process import Supervised
from corral.sandbox.spec import SandboxSpec
from corral.settings import Settings
from tests.security.attack import Attacker
from tests.tools import require_root

pytestmark = pytest.mark.sandbox


@pytest.fixture
def host_sleep() -> Iterator[subprocess.Popen[bytes]]:
    """A host process for the attacker to aim at."""
    proc = subprocess.Popen(["sleep", "30"])
    yield proc
    proc.kill()
    proc.wait()


def test_host_processes_are_invisible_to_ps(attacker: Attacker) -> None:
    """The attacker lists every process with ps."""
    result = attacker.run("ps", "-e", "-o", "pid=,comm=")
    assert result.ok, result.stderr
    (init_pid, init), (_, ps) = [line.split() for line in result.stdout.decode().splitlines()]
    init_name = attacker.on(bwrap="bwrap", docker="docker-init", podman="podman-init")  # podman's catatonit
    assert (init_pid, init, ps) == ("1", init_name, "ps")


def test_host_processes_are_absent_from_proc(attacker: Attacker, host_sleep: subprocess.Popen[bytes]) -> None:
    """The attacker looks up a host process and the test runner in /proc by their host pids."""
    setup = "pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())"
    host, runner = f"/proc/{host_sleep.pid}/cmdline", f"/proc/{os.getpid()}"
    result = attacker.evaluate(
        f"[pids, outcome(lambda: open({host!r})), outcome(lambda: os.stat({runner!r}))]",
        setup=setup,
    )
    assert len(result[0]) == 2
    assert result[0][0] == 1
    assert result[1:] == ["ENOENT", "ENOENT"]


def test_host_process_cannot_be_signalled(attacker: Attacker, host_sleep: subprocess.Popen[bytes]) -> None:
    """The attacker sends SIGKILL to a host process by its pid."""
    assert attacker.attempt(f"os.kill({host_sleep.pid}, signal.SIGKILL)") == "ESRCH"
    assert host_sleep.poll() is None


def test_kill_all_reaches_only_the_sandbox(attacker: Attacker, host_sleep: subprocess.Popen[bytes]) -> None:
    """The attacker sends SIGKILL to every process it may signal (kill -1)."""
    setup = "import subprocess; child = subprocess.Popen(['sleep', '30'])"
    assert attacker.evaluate("[outcome(lambda: os.kill(-1, signal.SIGKILL)), child.wait()]", setup=setup) == ["ok", -9]
    assert host_sleep.poll() is None


def test_ptrace_is_denied(attacker: Attacker) -> None:
    """The attacker asks to be traced (PTRACE_TRACEME) and attaches to the sandbox's init (PTRACE_ATTACH)."""
    outcomes = attacker.attempts("check(libc.ptrace(0, 0, None, None))", "check(libc.ptrace(16, 1, None, None))")
    assert outcomes == ["EPERM", "EPERM"]


def test_cross_process_memory_access_is_denied(attacker: Attacker) -> None:
    """The attacker reads the memory of the sandbox's init with process_vm_readv."""
    assert attacker.attempt("check(libc.syscall(NR['process_vm_readv'], 1, None, 0, None, 0, 0))") == "EPERM"


def test_runtime_binaries_cannot_be_overwritten(attacker: Attacker) -> None:
    """The attacker opens /proc/1/exe (bwrap) and /proc/self/exe for writing, as in CVE-2019-5736."""
    outcomes = attacker.attempts("open('/proc/1/exe', 'r+b')", "open('/proc/self/exe', 'r+b')")
    assert outcomes == ["EACCES", "EACCES"]


def test_proc_root_links_lead_back_into_the_sandbox(attacker: Attacker, workspace: Path) -> None:
    """The attacker follows /proc/1/root and /proc/1/cwd, hoping for the host's root and directories."""
    result = attacker.evaluate(
        "[sorted(os.listdir('/proc/1/root')) == sorted(os.listdir('/')),"
        " os.stat('/proc/1/root/etc').st_ino == os.stat('/etc').st_ino,"
        " outcome(lambda: os.listdir('/proc/1/root/root')),"
        " os.readlink('/proc/1/cwd')]"
    )
    root = attacker.on(bwrap="ENOENT", docker="EACCES")  # the image has its own /root, mode 0700
    assert result == [True, True, root, str(workspace)]


def test_cannot_become_root(attacker: Attacker) -> None:
    """The attacker calls setuid(0), setresuid(0, 0, 0) and setgroups([0])."""
    outcomes = attacker.attempts("os.setuid(0)", "os.setresuid(0, 0, 0)", "os.setgroups([0])")
    # under bwrap uid 0 is not even mapped in the sandbox's namespace; docker has no user namespace: no capability
    assert outcomes == attacker.on(bwrap=["EINVAL", "EINVAL", "EPERM"], docker=["EPERM", "EPERM", "EPERM"])


def test_no_capabilities_and_no_new_privileges(attacker: Attacker) -> None:
    """The attacker looks for any capability it holds, and for a way to gain one by exec."""
    setup = "status = dict(line.split(':', 1) for line in open('/proc/self/status'))"
    fields = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Uid")
    result = attacker.evaluate(f"[status[f].split() for f in {fields!r}]", setup=setup)
    assert result[:6] == [["0000000000000000"]] * 5 + [["1"]]
    uids = set(result[6])  # real, effective, saved, filesystem
    assert len(uids) == 1
    assert uids != {"0"}
    if attacker.backend == "bwrap":
        assert uids == {"1000"}
    else:  # docker has no user namespace: there it is the slot's host uid itself
        (uid,) = uids
        assert int(uid) >= Settings().sandbox_uid_base


def test_setuid_root_binaries_do_not_give_root(attacker: Attacker) -> None:
    """The attacker runs setuid-root programs (su, passwd), which would act as root if the bit were honoured."""
    code = """
        import subprocess
        for cmd in (['su', 'root', '-c', 'id -u'], ['passwd', '-S', 'root']):
            done = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, timeout=5)
            print(done.returncode, done.stdout.decode() + done.stderr.decode(), end='')
    """
    result = attacker.python(code)
    assert result.ok, result.stderr
    assert result.stdout.decode().splitlines() == [
        "1 Password: su: Authentication failure",
        attacker.on(
            bwrap="1 passwd: You may not view or modify password information for root.",
            docker="1 passwd: Cannot determine your user name.",  # the slot's uid has no passwd entry there
        ),
    ]


def _ids(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            fields[name] = " ".join(value.split())
    return fields


@pytest.mark.backends("bwrap")
def test_bwrap_holds_no_host_privilege_and_the_caller_keeps_its_own(
    sandbox: BwrapSandbox, workspace: Path, settings: Settings
) -> None:
    """Seen from the host while the sandbox runs: bwrap and the command have the slot's uid and gid as
    real, effective, saved and file-system ids, no groups and no capability, although the thread that
    started them borrowed those ids for the spawn; afterwards that thread is root again, capabilities and all."""
    require_root()
    before = _ids(threading.get_native_id())
    seen: dict[str, dict[str, str]] = {}

    def look(process: Supervised) -> None:
        seen["bwrap"] = _ids(process.pid)

    result = sandbox.run(SandboxSpec(("sleep", "0.3"), workspace), on_start=look)
    assert result.ok
    uid = seen["bwrap"]["Uid"].split()
    assert len(set(uid)) == 1
    assert int(uid[0]) >= settings.sandbox_uid_base
    assert seen["bwrap"]["Gid"] == seen["bwrap"]["Uid"]
    assert seen["bwrap"]["Groups"] == ""
    for caps in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(seen["bwrap"][caps], 16) == 0, caps
    assert os.getresuid() == (0, 0, 0)
    assert os.getresgid() == (0, 0, 0)
    assert _ids(threading.get_native_id()) == before
