"""The bubblewrap backend: the argv as a pure function, and the run that wires it up.

One run takes a slot (the host uid and cgroup names), creates the cgroups, hands the workspace
to the sandbox uid when corral is root, starts bwrap with the seccomp program on an fd, pumps
its output, and then undoes all of it in reverse, whatever happened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from corral.errors import CommandNotFoundError, SandboxUnavailableError, UsageError
from corral.sandbox import bridge, cgroups, paths, seccomp, slots, spawner, staging
from corral.sandbox.plan import plan_run, remove_created
from corral.sandbox.process import OutputSink, Supervised, TailBuffer
from corral.sandbox.spec import SANDBOX_HOME, Reason, RunResult, SandboxSpec, Violation
from corral.settings import Settings

__all__ = [
    "BwrapSandbox",
    "build_argv",
    "classify",
    "resolve_command",
]

OOM_EXIT = 137
REAP_INTERVAL = 30.0
"""Seconds between full sweeps for leftovers; a slot whose last holder died (it left notes) is swept when taken."""
TIMEOUT_EXIT = 124


def build_argv(
    spec: SandboxSpec,
    layout: paths.Layout,
    *,
    bwrap: str = "bwrap",
    seccomp_fd: int | None = None,
    staged: Mapping[Path, Path] | None = None,
    info_fd: int | None = None,
    gate_fd: int | None = None,
    file_fds: Mapping[Path, int] | None = None,
) -> list[str]:
    """The complete bwrap command line for ``spec`` (pure: no I/O).

    ``staged`` maps host paths to where bwrap finds them (see ``staging``); a path inside a staged
    directory is found inside its staged copy. Every path is bound at its own host path inside.
    """
    stage = staged or {}

    def source(path: Path) -> str:
        for host, point in stage.items():
            if path == host or path.is_relative_to(host):
                return str(point / path.relative_to(host))
        return str(path)

    def bind(flag: str, path: Path) -> list[str]:
        return [flag, source(path), str(path)]

    argv = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--uid",
        str(spec.uid),
        "--gid",
        str(spec.gid),
        "--hostname",
        spec.hostname,
    ]
    for system_path, target in layout.system:
        argv += ["--symlink", target, system_path] if target is not None else ["--ro-bind", system_path, system_path]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run", "--tmpfs", SANDBOX_HOME]
    for path in spec.ro_binds:
        argv += bind("--ro-bind", path)
    argv += bind("--bind", spec.workspace)
    for path in layout.pinned:
        argv += bind("--bind", path)
    for path in layout.protected:
        argv += bind("--ro-bind", path)
    for mask, is_dir in layout.masks:
        argv += ["--tmpfs", str(mask), "--remount-ro", str(mask)] if is_dir else ["--ro-bind", "/dev/null", str(mask)]
    file_dirs = sorted({dest.parent for dest in spec.files if not _in_scratch(dest)})  # see check_files
    for directory in file_dirs:
        argv += ["--tmpfs", str(directory)]
    for dest, fd in sorted((file_fds or {}).items()):
        argv += ["--ro-bind-data", str(fd), str(dest)]
    for directory in file_dirs:
        argv += ["--remount-ro", str(directory)]
    argv += ["--remount-ro", "/", "--chdir", str(spec.cwd or spec.workspace)]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    if info_fd is not None:
        argv += ["--info-fd", str(info_fd)]
    if gate_fd is not None:
        argv += ["--block-fd", str(gate_fd)]
    return [*argv, "--", *spec.command]


SCRATCH = (Path("/tmp"), Path("/run"), Path(SANDBOX_HOME))
"""The sandbox's own tmpfs trees: bwrap creates files and directories there without touching the host."""


def _in_scratch(path: Path) -> bool:
    return any(path.is_relative_to(tree) for tree in SCRATCH)


def check_files(spec: SandboxSpec, *, host_dirs: bool = True) -> None:
    """Refuse a file to place that would need a mount point on the host (inside a bound host tree).

    ``host_dirs``: the directory of a file outside the scratch trees must exist on the host (bwrap
    shows the host's system; a container engine creates it in the image's tree instead).
    """
    for dest in spec.files:
        if not dest.is_absolute() or ".." in dest.parts or dest.parent == Path("/"):
            msg = f"The file {dest} to place in the sandbox needs an absolute path below a directory; fix its path."
            raise UsageError(msg)
        if any(dest.is_relative_to(tree) for tree in (spec.workspace, *spec.ro_binds)):
            msg = f"The file {dest} to place lies in a tree bound from the host; write it there instead."
            raise UsageError(msg)
        if host_dirs and not _in_scratch(dest) and not dest.parent.is_dir():
            msg = f"The directory {dest.parent} must exist on the host to hold {dest.name} inside; create it."
            raise UsageError(msg)


def resolve_command(spec: SandboxSpec, visible: Sequence[Path]) -> str:
    """Check that the command exists inside the sandbox, as the sandbox's PATH would find it."""
    name = spec.command[0]
    cwd = spec.cwd or spec.workspace
    path_dirs = spec.full_env()["PATH"].split(":")
    candidates = [cwd / name] if "/" in name else [Path(d) / name for d in path_dirs if d.startswith("/")]
    for candidate in candidates:
        if (
            any(candidate.is_relative_to(tree) for tree in visible)
            and os.access(candidate, os.X_OK)
            and not candidate.is_dir()
        ):
            return str(candidate)
    msg = (
        f"The command {name!r} does not exist inside the sandbox (searched {', '.join(map(str, candidates))}); "
        f"give its full path, or make its directory visible with --ro DIR."
    )
    raise CommandNotFoundError(msg)


@dataclasses.dataclass
class BwrapSandbox:
    """Runs sandboxed commands with bubblewrap on this host."""

    settings: Settings
    driver: cgroups.CgroupDriver = dataclasses.field(default_factory=cgroups.detect)
    _reaped_at: float = dataclasses.field(default=-REAP_INTERVAL, init=False, repr=False)
    _program: bytes | None = dataclasses.field(default=None, init=False, repr=False)

    @property
    def is_root(self) -> bool:
        return os.geteuid() == 0

    def check(self, spec: SandboxSpec) -> None:
        """Refuse a spec that cannot run, before anything is started."""
        if not spec.command:
            msg = "No command was given to run in the sandbox; put it after --, as in: corral sandbox run -- ls -la."
            raise UsageError(msg)
        if spec.uid == 0 or spec.gid == 0:
            msg = (
                f"The sandbox uid/gid {spec.uid}/{spec.gid} would be root inside; use an unprivileged id such as 1000."
            )
            raise UsageError(msg)
        if spec.egress is not None:
            bridge.check_socket(spec.egress)
        check_files(spec)
        if _which(self.settings.bwrap, os.environ.get("PATH", os.defpath)) is None:
            msg = (
                f"bubblewrap ({self.settings.bwrap!r}) is not installed; install it "
                f"(apt-get install --no-install-recommends bubblewrap) and run corral doctor."
            )
            raise SandboxUnavailableError(msg)

    def run(
        self,
        spec: SandboxSpec,
        *,
        on_output: OutputSink | None = None,
        stdin: int | None = None,
        on_start: Callable[[Supervised], None] | None = None,
        tty: int | None = None,
    ) -> RunResult:
        """Run ``spec`` to its end and report how it ended; ``tty``: see ``SandboxBackend.run``."""
        called = time.monotonic()
        self.check(spec)
        spec, before, layout = plan_run(spec, self.settings)
        visible = [Path(p) for p, _ in layout.system] + [spec.workspace, *spec.ro_binds]
        resolve_command(spec, visible)
        if self._program is None:
            self._program = seccomp.load_bpf(self.settings.home / "cache")
        program = self._program
        if time.monotonic() - self._reaped_at > REAP_INTERVAL:
            self.reap()
        slot = slots.acquire(self.settings.runtime, self.settings.sandbox_slots)
        try:
            if slot.recorded:
                self._reap_slot(slot)
            return self._run_in_slot(spec, layout, before, program, slot, on_output, stdin, on_start, tty, called)
        finally:
            slot.release()

    def reap(self) -> list[str]:
        """Remove what killed callers left in free slots: processes, cgroups, staging, workspace ownership."""
        self._reaped_at = time.monotonic()
        runtime = self.settings.runtime
        (runtime / "slots").mkdir(parents=True, exist_ok=True, mode=0o700)
        found = {slots.check_index(name) for name in self.driver.leftovers()}
        found |= {slots.check_index(p.name) for p in _entries(runtime / "stage")}
        found |= {slots.check_index(f"s{p.stem}") for p in _entries(runtime / "slots") if p.stat().st_size}
        reaped: list[str] = []
        for index in sorted(i for i in found if i is not None):
            slot = slots.lock_if_free(runtime / "slots", index)
            if slot is not None:
                try:
                    reaped += self._reap_slot(slot)
                finally:
                    slot.release()
        return reaped

    def _reap_slot(self, slot: slots.Slot) -> list[str]:
        reaped = []
        engine = slot.facts().get("engine")
        if engine in ("docker", "podman"):  # the slot's dead holder ran a container
            from corral.errors import CorralError
            from corral.sandbox.container import ContainerSandbox

            with contextlib.suppress(CorralError):  # an engine that is gone has no container left
                reaped += ContainerSandbox(self.settings, image="", engine=engine).reap_slot(slot)
        own = self.driver.group(slot.name)
        for group in (own, cgroups.Cgroup.from_roles(*slots.leftover_cgroups(slot))):
            if any(d.exists() for d in group.dirs):
                group.remove()
                reaped.append(f"cgroups of {slot.name}")
        staging.clear(self.settings.runtime, slot.name)
        leftover = slots.leftover_owner(slot)
        if leftover is not None:
            slots.restore_owner(*leftover)
            reaped.append(f"ownership of {leftover[0]}")
        return reaped

    def _run_in_slot(
        self,
        spec: SandboxSpec,
        layout: paths.Layout,
        before: frozenset[Path],
        program: bytes,
        slot: slots.Slot,
        on_output: OutputSink | None,
        stdin: int | None,
        on_start: Callable[[Supervised], None] | None,
        tty: int | None,
        called: float,
    ) -> RunResult:
        limits = spec.limits
        host_uid = self.settings.sandbox_uid_base + slot.index if self.is_root else None
        with contextlib.ExitStack() as undo:  # undone in reverse: fds, workspace owner, cgroups
            group = self.driver.group(slot.name) if self.driver.available else None
            if group is not None:  # created below, once bwrap runs; removed after bwrap is gone
                slot.record(cgroup_version=self.driver.version, cgroups=group.roles())
                undo.callback(group.remove)
            if host_uid is not None:
                owner = slots.take_owner(slot, spec.workspace, host_uid)
                undo.callback(slots.restore_owner, spec.workspace, host_uid, owner)
            seccomp_fd = _pipe_with(program, undo)
            file_fds = {dest: _memfd_with(data, undo) for dest, data in spec.files.items()}
            staged: dict[Path, Path] = {}
            if host_uid is not None and not all(map(_reachable_by_others, (spec.workspace, *spec.ro_binds))):
                staged = staging.prepare(self.settings.runtime, slot.name, (spec.workspace, *spec.ro_binds))
                undo.callback(staging.clear, self.settings.runtime, slot.name)
            # bwrap reports its sandbox's pid on info_fd and waits on gate_fd before running the
            # command, so the parent can put it in the cgroups (and let the relay start) first.
            info_read, info_fd = os.pipe()
            undo.callback(os.close, info_read)
            gate_fd, gate_write = os.pipe()
            undo.callback(os.close, gate_write)
            argv = build_argv(
                spec,
                layout,
                bwrap=self.settings.bwrap,
                seccomp_fd=seccomp_fd,
                staged=staged,
                info_fd=info_fd,
                gate_fd=gate_fd,
                file_fds=file_fds,
            )
            try:
                with spawner.in_private_mounts(staged) if staged else contextlib.nullcontext():
                    proc = Supervised(
                        argv,
                        env=spec.full_env(),
                        pass_fds=(seccomp_fd, info_fd, gate_fd, *file_fds.values()),
                        stdin=stdin,
                        user=host_uid,
                        kill_tree=group.kill if group is not None else None,
                        tty=tty,
                    )
            finally:
                os.close(info_fd)
                os.close(gate_fd)
            undo.callback(proc.abort)  # if anything below fails, the sandbox must not run on
            if group is not None:  # while bwrap builds the sandbox: its command waits at the gate
                self.driver.create(slot.name, limits)
            sandbox_pid = _sandbox_pid(info_read)
            not_the_command = {proc.pid, sandbox_pid or proc.pid}
            if group is not None and sandbox_pid is not None:
                group.join(sandbox_pid)
            if spec.egress is not None and sandbox_pid is not None:
                if host_uid is not None:
                    os.chown(spec.egress, host_uid, host_uid)
                relay = bridge.start_relay(spec.egress, sandbox_pid, host_uid)
                not_the_command.add(relay.pid)
                undo.callback(bridge.stop_relay, relay)
                if group is not None:
                    group.join(relay.pid)
                bridge.wait_listening(relay)
            if group is not None and sandbox_pid is not None:
                proc.signal_tree = _signaller(group, not_the_command)
            _open_gate(gate_write)
            if on_start is not None:
                on_start(proc)
            out, err = TailBuffer(self.settings.output_limit), TailBuffer(self.settings.output_limit)
            code = proc.pump(out, err, on_output, limits.timeout)
            oom = group is not None and code != 0 and group.oom_kills() > 0
            peak = group.peak_memory() if group is not None else None
        violations = remove_created(spec.workspace, before)
        duration = time.monotonic() - called  # the whole run: setup and cleanup too
        wants_limits = any(v is not None for v in (limits.memory, limits.pids, limits.cpus))
        return _result(
            code, proc.killed_by, oom, duration, peak, out, err, self.driver, wants_limits, violations, slot.name
        )


def _entries(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except FileNotFoundError:
        return []


@functools.cache
def _which(program: str, search: str) -> str | None:
    """``shutil.which`` without importing shutil (and fnmatch) on the start-up path; once a process."""
    if "/" in program:
        return program if os.access(program, os.X_OK) else None
    for directory in search.split(os.pathsep):
        candidate = Path(directory, program)
        if os.access(candidate, os.X_OK) and not candidate.is_dir():
            return str(candidate)
    return None


def _pipe_with(data: bytes, undo: contextlib.ExitStack) -> int:
    """A pipe already holding ``data`` (a seccomp program is far below the pipe buffer); the read end."""
    read_fd, write_fd = os.pipe()
    undo.callback(os.close, read_fd)
    try:
        os.write(write_fd, data)
    finally:
        os.close(write_fd)
    return read_fd


def _signaller(group: cgroups.Cgroup, exclude: set[int]) -> Callable[[int], None]:
    """Signals every process in ``group`` but bwrap and the relay (the command's whole tree)."""

    def send(signum: int) -> None:
        for pid in group.pids_inside() - exclude:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    return send


def _memfd_with(data: bytes, undo: contextlib.ExitStack) -> int:
    """An anonymous file holding ``data``, read from its start (any size, unlike a pipe)."""
    fd = os.memfd_create("corral-file")
    undo.callback(os.close, fd)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _reachable_by_others(path: Path) -> bool:
    """Whether any user may look up ``path`` (every directory above it is searchable by others)."""
    return all(parent.stat().st_mode & 0o001 for parent in path.parents)


def _sandbox_pid(info_read: int) -> int | None:
    """The host pid of the sandbox's first process, as bwrap reports it (``None`` if bwrap failed first)."""
    info = b""
    while chunk := os.read(info_read, 4096):
        info += chunk
    match = re.search(rb'"child-pid":\s*(\d+)', info)
    return int(match[1]) if match else None


def _open_gate(gate_write: int) -> None:
    """Let the command start (everything inside descends from the process the cgroups now hold)."""
    with contextlib.suppress(BrokenPipeError):  # bwrap already failed; pump() reports how
        os.write(gate_write, b"1")


def classify(code: int, killed_by: str | None, oom: bool) -> tuple[Reason, int, int | None]:
    """How a run ended from the launcher's exit status: reason, exit code, and the signal it died of."""
    died_of = None
    reason: Reason
    if code < 0:  # the launcher itself died of a signal (we killed it)
        died_of, code = -code, 128 - code
    elif code > 128:
        died_of = code - 128
    if killed_by == "timeout":
        reason, code = "timeout", TIMEOUT_EXIT
    elif oom:
        reason, code = "oom", OOM_EXIT
    elif killed_by is not None or died_of == signal.SIGKILL:
        reason, code = "killed", OOM_EXIT
    else:
        reason = "exited"
    return reason, code, died_of


def _result(
    code: int,
    killed_by: str | None,
    oom: bool,
    duration: float,
    peak: int | None,
    out: TailBuffer,
    err: TailBuffer,
    driver: cgroups.CgroupDriver,
    wants_limits: bool,
    violations: tuple[Violation, ...],
    sandbox_id: str,
) -> RunResult:
    reason, code, died_of = classify(code, killed_by, oom)
    note = driver.note if not driver.available else ""
    if wants_limits and note:
        note = f"limits not enforced: {note}"
    return RunResult(
        exit_code=code,
        reason=reason,
        duration=duration,
        signal=died_of,
        peak_memory=peak,
        stdout=out.getvalue(),
        stderr=err.getvalue(),
        stdout_dropped=out.dropped,
        stderr_dropped=err.dropped,
        limits_enforced=driver.available,
        limits_note=note,
        violations=violations,
        sandbox_id=sandbox_id,
    )
