"""Running an attack in a real sandbox, and reading back exactly how it failed.

Attack code runs under Debian's ``/usr/bin/python3`` inside the sandbox (the test runner's own
Python is not visible there). ``Attacker.attempts`` evaluates expressions and returns, for each,
``"ok"`` or the name of the errno it failed with, so a test can say *how* an attack must fail.

The scanners at the bottom find what a sandbox may leave on the host: processes running as a
sandbox uid, and sandbox cgroups, of slots that nobody holds any more.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral.sandbox.base import SandboxBackend
from corral.sandbox.cgroups import CgroupDriver
from corral.sandbox.process import Supervised
from corral.sandbox.spec import Limits, RunResult, SandboxSpec
from corral.settings import Settings

DEFAULT_LIMITS = Limits(memory=256 << 20, pids=64, timeout=10)
SAME_AS_DOCKER: Any = object()
"""``Attacker.on``'s default for podman: the value given for docker."""

SYSCALLS = {
    "x86_64": {
        "ioctl": 16,
        "socket": 41,
        "clone": 56,
        "keyctl": 250,
        "add_key": 248,
        "perf_event_open": 298,
        "open_by_handle_at": 304,
        "process_vm_readv": 310,
        "bpf": 321,
        "io_uring_setup": 425,
        "clone3": 435,
    },
    "aarch64": {
        "ioctl": 29,
        "socket": 198,
        "clone": 220,
        "keyctl": 219,
        "add_key": 217,
        "perf_event_open": 241,
        "open_by_handle_at": 265,
        "process_vm_readv": 270,
        "bpf": 280,
        "io_uring_setup": 425,
        "clone3": 435,
    },
}

PRELUDE = """\
import ctypes, errno, json, os, signal, socket, stat, sys
libc = ctypes.CDLL(None, use_errno=True)
NR = json.loads({syscalls!r})

def check(ret):
    '''Raise OSError when a libc call failed (returned -1).'''
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret

def outcome(call):
    '''"ok", or the name of the errno the call failed with.'''
    try:
        call()
    except OSError as err:
        return errno.errorcode.get(err.errno, str(err.errno))
    return "ok"

"""


@dataclasses.dataclass
class Attacker:
    """Runs attack commands in ``sandbox`` with ``workspace`` as the writable tree."""

    sandbox: SandboxBackend
    workspace: Path

    @property
    def backend(self) -> str:
        """``bwrap``, ``docker`` or ``podman``: the backend the attacks run on."""
        from corral.sandbox.container import ContainerSandbox

        return self.sandbox.engine if isinstance(self.sandbox, ContainerSandbox) else "bwrap"

    def on(self, *, bwrap: Any, docker: Any, podman: Any = SAME_AS_DOCKER) -> Any:
        """The value given for this attacker's backend: where the same attack fails another way there.

        Podman fails as Docker does unless ``podman`` says otherwise.
        """
        if self.backend == "podman" and podman is not SAME_AS_DOCKER:
            return podman
        return bwrap if self.backend == "bwrap" else docker

    def run(self, *command: str, on_start: Callable[[Supervised], None] | None = None, **fields: Any) -> RunResult:
        """Run ``command``; ``fields`` are ``SandboxSpec`` fields (limits default to ``DEFAULT_LIMITS``)."""
        fields.setdefault("limits", DEFAULT_LIMITS)
        return self.sandbox.run(SandboxSpec(command=command, workspace=self.workspace, **fields), on_start=on_start)

    def python(self, code: str, **fields: Any) -> RunResult:
        syscalls = json.dumps(SYSCALLS.get(os.uname().machine, {}))
        return self.run("python3", "-c", PRELUDE.format(syscalls=syscalls) + textwrap.dedent(code), **fields)

    def attempts(self, *expressions: str, **fields: Any) -> list[str]:
        """For each expression, ``"ok"`` or the errno name it failed with (all in one sandbox)."""
        calls = ", ".join(f"outcome(lambda: {e})" for e in expressions)
        return self.evaluate(f"[{calls}]", **fields)

    def attempt(self, expression: str, **fields: Any) -> str:
        (result,) = self.attempts(expression, **fields)
        return result

    def evaluate(self, expression: str, *, setup: str = "", **fields: Any) -> Any:
        """The value of ``expression`` (JSON-serialisable) evaluated inside, after ``setup``."""
        result = self.python(f"{textwrap.dedent(setup)}\nprint(json.dumps({expression}))", **fields)
        assert result.ok, f"the attack script itself failed: {result}"
        return json.loads(result.stdout)


def uid_of(pid: int) -> int | None:
    """The real uid of a live process; ``None`` when it is gone or a zombie.

    A zombie has released everything but its pid, and waits for its parent to collect it. bwrap's
    init inside the sandbox ends as one: the outer bwrap exits without waiting for it, so it is
    the host's init that reaps it, on the host init's own schedule.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    if re.search(r"^State:\s+Z", status, re.MULTILINE):
        return None
    match = re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE)
    return int(match.group(1)) if match else None


def sandbox_processes(settings: Settings) -> dict[int, int]:
    """Live host processes running as a sandbox uid: pid -> uid."""
    low, high = settings.sandbox_uid_base, settings.sandbox_uid_base + settings.sandbox_slots
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (uid := uid_of(int(entry))) is not None and low <= uid < high:
            found[int(entry)] = uid
    return found


def sandbox_cgroups(driver: CgroupDriver) -> list[Path]:
    """Existing sandbox cgroups (``s<slot>``) in every hierarchy the driver uses."""
    return sorted(
        entry
        for base in driver.bases.values()
        if base.is_dir()
        for entry in base.iterdir()
        if entry.is_dir() and re.fullmatch(r"s\d+", entry.name)
    )


def slot_is_held(settings: Settings, index: int) -> bool:
    """Whether a live corral holds slot ``index`` (then its processes and cgroups are not leftovers)."""
    try:
        fd = os.open(settings.runtime / "slots" / f"{index}.lock", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def leftovers(settings: Settings, driver: CgroupDriver, slots: set[int]) -> set[str]:
    """Processes and cgroups of the given sandbox slots, where no live corral holds the slot."""
    found = {
        f"process {pid} (uid {uid})"
        for pid, uid in sandbox_processes(settings).items()
        if uid - settings.sandbox_uid_base in slots and not slot_is_held(settings, uid - settings.sandbox_uid_base)
    }
    found.update(
        f"cgroup {group}"
        for group in sandbox_cgroups(driver)
        if int(group.name[1:]) in slots and not slot_is_held(settings, int(group.name[1:]))
    )
    return found


def host_mounts() -> set[str]:
    """This process's mounts (mount point and source), to show that no run leaves one behind."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return {" ".join(line.split()[3:5]) for line in lines}
