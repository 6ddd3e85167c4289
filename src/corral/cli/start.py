"""``corral start AGENT``: print the plan, ask, run the agent on a terminal of its own, clean up.

The sandbox never gets the user's terminal (a shared terminal lets a process inject input with
``TIOCSTI``): corral opens a new pseudo-terminal, gives the sandbox its slave, puts the user's
terminal in raw mode and copies bytes both ways, forwarding window size changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import select
import signal
import struct
import sys
import termios
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from corral.remote_control import REMOTE_CONTROL_HOSTS
from corral.session import Plan

if TYPE_CHECKING:
    from corral.sandbox.base import SandboxBackend
    from corral.session import Session
    from corral.settings import Settings

__all__ = ["StartArgs", "format_plan", "start"]

NO_LOGIN_PLAN = "no claude.ai login is adopted: run `corral auth import-claude-dir ~/.claude` first"


@dataclasses.dataclass(frozen=True)
class StartArgs:
    agent: str
    manifest: Path | None = None
    dry_run: bool = False
    cwd: bool = False
    yes: bool = False
    remote_control: bool = False
    name: str | None = None


def _size(value: int | None) -> str:
    if value is None:
        return "default"
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if value >= 1 << shift and value % (1 << shift) == 0:
            return f"{value >> shift}{unit}"
    return f"{value} bytes"


def format_plan(plan: Plan) -> str:
    """The plan as people read it: one ``label: value`` line per fact (env values never shown)."""
    backend = (
        plan.backend if plan.backend == "bwrap" else f"{plan.backend} (image {plan.image}, runtime {plan.runtime})"
    )
    if plan.runtime == "runsc":
        backend += "; gVisor's kernel, with corral's seccomp rules inside (AF_UNIX allowed for the relay)"
    workspace = f"{plan.workspace} (empty)"
    if plan.copy_from is not None:
        workspace = f"{plan.workspace} (a copy of {plan.copy_from}, .git included; the host directory is not written)"
    egress = "the API gateway (the credential stays on the host)"
    if plan.remote_control:
        egress = f"Anthropic for remote control ({', '.join(REMOTE_CONTROL_HOSTS)}), no gateway"
    if plan.allow:
        egress += f"; allow {', '.join(plan.allow)}"
    if plan.ssh:
        egress += f"; ssh {', '.join(host.target for host in plan.ssh)}"
    if plan.deny:
        egress += f"; deny {', '.join(plan.deny)}"
    prompt = "none"
    if plan.prompt:
        first = plan.prompt.strip().splitlines()[0] if plan.prompt.strip() else ""
        prompt = f"{len(plan.prompt.encode())} bytes, first line: {first[:70]!r}"
    limits = plan.limits
    remote = "off"
    if plan.remote_control and plan.login is None:
        remote = f"ON, but {NO_LOGIN_PLAN}"
    elif plan.remote_control:
        remote = (
            f"ON: the session uses your claude.ai login from {plan.login}, copied INTO the sandbox (readable "
            f"by the agent), and reaches {' and '.join(REMOTE_CONTROL_HOSTS)} directly, not through the "
            "gateway; a login it refreshes is carried back when it ends"
        )
    rows = [
        ("agent", f"{plan.agent} (session {plan.name}, from {plan.manifest})"),
        ("bottle", f"{plan.bottle}: {backend}"),
        ("workspace", workspace),
        ("env", ", ".join(plan.env_names) or "none"),
        ("skills", ", ".join(str(s) for s in plan.skills) or "none"),
        ("ssh", ", ".join(f"{h.name} ({h.user + '@' if h.user else ''}{h.target})" for h in plan.ssh) or "none"),
        ("egress", egress),
        ("prompt", prompt),
        ("model", plan.model or "default"),
        ("permissions", plan.permission_mode),
        ("limits", f"memory {_size(limits.memory)}, pids {limits.pids or 'default'}, cpus {limits.cpus or 'all'}"),
        ("mounts", ", ".join(str(m) for m in plan.mounts) or "none"),
        ("remote control", remote),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label + ':':<{width + 1}} {value}" for label, value in rows) + "\n"


def _ask(question: str) -> bool:
    """Ask on the terminal (not stdin); no terminal means no."""
    try:
        with open("/dev/tty", "r+") as tty:
            tty.write(f"{question} [y/N] ")
            tty.flush()
            return tty.readline().strip().lower() in ("y", "yes")
    except OSError:
        return False


def _choose(question: str, choices: str, default: str) -> str:
    try:
        with open("/dev/tty", "r+") as tty:
            tty.write(question)
            tty.flush()
            answer = tty.readline().strip().lower()[:1]
    except OSError:
        return default
    return answer if answer and answer in choices else default


def start(args: StartArgs, *, out: TextIO = sys.stdout, environ: Mapping[str, str] | None = None) -> int:
    """Run ``corral start``; the exit code (the agent's, 0 for a dry run, 1 when not launched)."""
    from corral.manifest import load_manifest
    from corral.sandbox.spec import Limits
    from corral.session import check_runtime, make_plan, reap
    from corral.settings import get_settings

    environ = os.environ if environ is None else environ
    settings = get_settings()
    loaded = load_manifest(args.manifest)
    here = Path.cwd()
    if not args.dry_run:
        reap(settings.home, settings.runtime)
    plan = make_plan(
        loaded,
        args.agent,
        home=settings.home,
        permission_mode=settings.permission_mode,
        cwd=here if args.cwd else None,
        remote_control=args.remote_control,
        name=args.name,
        defaults=Limits(memory=settings.memory, pids=settings.pids, cpus=settings.cpus),
    )
    out.write(format_plan(plan))
    out.flush()
    import shutil

    check_runtime(plan, shutil.which)
    if args.dry_run:
        return 0
    from corral.session import check_startable, sandbox_for

    sandbox = sandbox_for(plan, settings)
    check_startable(plan, sandbox)
    sandbox.reap()  # a killed session's container too
    if not args.yes and not _ask("launch this agent?"):
        out.write("Not launched.\n")
        return 1
    return _run(plan, sandbox, args, settings, environ, out)


def _run(
    plan: Plan, sandbox: SandboxBackend, args: StartArgs, settings: Settings, environ: Mapping[str, str], out: TextIO
) -> int:
    from corral.session import Session, launch
    from corral.workcopy import copy_in

    session = Session.claim(settings.home, plan.agent, args.name, settings.runtime)
    try:
        plan = dataclasses.replace(plan, name=session.name, workspace=session.dirs.work)
        base = copy_in(plan.copy_from, session.dirs) if plan.copy_from is not None else None

        def say(text: str) -> None:  # what became of a remote-control session's login, once the sandbox is gone
            if text:
                out.write(f"{text}\n")

        with launch(plan, session, settings, environ, say) as spec, Relay() as relay:
            result = sandbox.run(spec, tty=relay.slave, on_start=relay.started)
        out.write(f"\r\nThe session {session.name} ended (exit {result.exit_code}).\n")
        if base is not None and plan.copy_from is not None:
            _review(session, base, plan.copy_from, args.yes, out)
        return result.exit_code
    finally:
        session.remove()


def _review(session: Session, base: str, source: Path, yes: bool, out: TextIO) -> None:
    """Show what the session changed in its copy and keep it as a branch or patch, or discard it."""
    from corral.workcopy import changes, keep_branch, keep_patch

    found = changes(session.dirs, base)
    if found.empty:
        out.write("Nothing changed in the copy; nothing to keep.\n")
        return
    out.write(f"The session changed:\n{found.status}\n{found.stat}\n")
    is_repo = (source / ".git").exists()
    patch = source.parent / f"corral-session-{session.name}.patch"
    if yes:
        choice = "p"
    else:
        offer = "[b]ranch, [p]atch, [d]iscard" if is_repo else "[p]atch, [d]iscard"
        choice = _choose(f"Keep the changes? {offer} (default patch): ", "bpd" if is_repo else "pd", "p")
    if choice == "b":
        branch = keep_branch(session.dirs, found, source, session.name)
        out.write(f"Kept on branch {branch} of {source} (your working tree is untouched).\n")
    elif choice == "p":
        keep_patch(session.dirs, found, patch)
        out.write(f"Kept as the patch {patch} (apply it with: git apply {patch}).\n")
    else:
        out.write("Discarded.\n")


def _winsize(fd: int) -> bytes | None:
    try:
        return fcntl.ioctl(fd, termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
    except OSError:
        return None


class Relay:
    """A new pseudo-terminal for the sandbox, copied to and from the user's terminal (like ``script``)."""

    def __init__(self, stdin: int = 0, stdout: int = 1) -> None:
        self.stdin, self.stdout = stdin, stdout
        self.master, self.slave = os.openpty()
        self._wake_r, self._wake_w = os.pipe()
        self._saved: list[Any] | None = None
        self._thread = threading.Thread(target=self._copy, name="corral-tty", daemon=True)
        self._proc: object = None
        self._handlers: dict[int, object] = {}

    def __enter__(self) -> Relay:
        self._resize()
        if os.isatty(self.stdin):
            import tty

            self._saved = termios.tcgetattr(self.stdin)
            tty.setraw(self.stdin)
        for signum in (signal.SIGHUP, signal.SIGTERM):
            self._handlers[signum] = signal.signal(signum, _hang_up)
        self._handlers[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, lambda *_: self._resize(forward=True))
        self._thread.start()
        return self

    def started(self, proc: object) -> None:
        """The sandbox runs: it holds the slave now, so ours closes (its exit then ends the copy)."""
        self._proc = proc
        os.close(self.slave)
        self.slave = -1

    def _resize(self, *, forward: bool = False) -> None:
        size = _winsize(self.stdin)
        if size is not None:
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)
        signal_tree = getattr(self._proc, "signal_tree", None)
        if forward and callable(signal_tree):  # the sandbox has no controlling terminal to get it from
            signal_tree(signal.SIGWINCH)

    def _copy(self) -> None:
        inputs = [self.master, self._wake_r, self.stdin]
        while True:
            ready, _, _ = select.select(inputs, [], [])
            if self._wake_r in ready:
                return
            if self.stdin in ready:
                data = _read(self.stdin)
                if not data:  # the user's terminal is gone: end the session
                    inputs.remove(self.stdin)
                    kill: Callable[[str], None] | None = getattr(self._proc, "kill", None)
                    if kill is not None:
                        kill("hangup")
                    continue
                _write_all(self.master, data)
            if self.master in ready:
                data = _read(self.master)
                if not data:
                    return
                _write_all(self.stdout, data)

    def __exit__(self, *exc: object) -> None:
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            os.set_blocking(self.master, False)
            while data := _read(self.master):
                _write_all(self.stdout, data)
        if self._saved is not None:
            termios.tcsetattr(self.stdin, termios.TCSADRAIN, self._saved)
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        for fd in (self.master, self.slave, self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)


def _hang_up(signum: int, _frame: object) -> None:
    """A closed terminal or a kill: stop the sandbox (the run's cleanup runs as this unwinds)."""
    for each in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(each, signal.SIG_IGN)
    raise KeyboardInterrupt


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except (BlockingIOError, InterruptedError):
        return b""
    except OSError:  # EIO: the slave side is closed
        return b""


def _write_all(fd: int, data: bytes) -> None:
    with contextlib.suppress(OSError):
        while data:
            data = data[os.write(fd, data) :]
