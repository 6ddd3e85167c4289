"""The container backend: Docker or Podman through their command line, shaped like the bubblewrap one.

A run takes a slot (its host uid, as for bwrap), hands the workspace to that uid, and starts one
``docker run`` (or ``podman run``) of the bottle's image with: no network (``--network none``),
every capability dropped, ``no-new-privileges``, corral's seccomp rules as the engine's profile, a
read-only root file system with tmpfs ``/tmp``, ``/run`` and home, the pids, memory and cpu
limits, the workspace bound at its own path as the only writable tree, the protected paths bound
read-only onto themselves and the secrets inside a bound tree masked, exactly as ``paths`` plans
them for bwrap. ``--init`` puts a small init first, so signals reach the command and orphans are
reaped.

Egress works as with bubblewrap. Under runc the relay (socat) is started on the host, as the
slot's uid, in the container's network namespace (found through the slot's uid, which only this
sandbox's processes have); the proxy socket is never visible inside and AF_UNIX stays forbidden.
gVisor (``runsc``) keeps its own network stack inside its sandbox, so there the socket is mounted
in and socat runs inside, through AF_UNIX, which gVisor's profile (``seccomp.GVISOR_RULES``) allows;
runsc applies the profile only with ``--oci-seccomp``, so a runsc registered without it is refused.
Either way the command waits until the relay listens.

The container is named ``corral-<slot>-<random>`` and labelled with its slot, so a container a
killed caller left behind is found and removed by the next run (its slot is free by then).

The command line itself is ``container_argv``'s. Podman's own configuration (its runtime, default
ulimits, storage) is the user's: corral passes ``CONTAINERS_CONF`` through to it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from corral.errors import SandboxError, SandboxUnavailableError, UsageError
from corral.sandbox import bridge, paths, seccomp, slots
from corral.sandbox.bwrap import check_files as check_bwrap_files
from corral.sandbox.bwrap import classify
from corral.sandbox.container_argv import DIALECTS, LABEL, MASK, Engine, Runtime, build_run_argv, cli_env
from corral.sandbox.plan import plan_run, remove_created
from corral.sandbox.process import OutputSink, Supervised, TailBuffer
from corral.sandbox.spec import RunResult, SandboxSpec, Violation
from corral.settings import Settings

__all__ = ["LABEL", "ContainerSandbox", "Engine", "Runtime", "build_run_argv", "cli_env"]

OOM_EXIT = 137
REAP_INTERVAL = 30.0
CLI_TIMEOUT = 60.0
MAX_OPEN_FILES = 1 << 20


@dataclasses.dataclass
class ContainerSandbox:
    """Runs sandboxed commands in containers of ``image`` on the Docker or Podman engine."""

    settings: Settings
    image: str
    engine: Engine = "docker"
    runtime: Runtime = "runc"
    environ: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(os.environ))
    _checked: bool = dataclasses.field(default=False, init=False, repr=False)
    _reaped_at: float = dataclasses.field(default=-REAP_INTERVAL, init=False, repr=False)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the engine's CLI with ``args``; a failure raises ``SandboxError`` with its message."""
        try:
            done = subprocess.run(
                [self.engine, *args],
                env=cli_env(self.environ),
                capture_output=True,
                text=True,
                timeout=CLI_TIMEOUT,
                check=False,
            )
        except FileNotFoundError:
            msg = (
                f"The {self.engine} command is not installed; install it (apt-get install --no-install-recommends "
                f"{'docker.io' if self.engine == 'docker' else 'podman'}) or use the bwrap backend."
            )
            raise SandboxUnavailableError(msg) from None
        except subprocess.TimeoutExpired:
            msg = f"{self.engine} {args[0]} did not answer within {CLI_TIMEOUT:g}s; check that its engine runs."
            raise SandboxUnavailableError(msg) from None
        if check and done.returncode != 0:
            msg = f"{self.engine} {args[0]} failed: {done.stderr.strip() or done.returncode}."
            raise SandboxError(msg)
        return done

    def check(self, spec: SandboxSpec) -> None:
        """Refuse what cannot run: no engine, no image, the runtime not registered, a bad spec."""
        if not spec.command:
            msg = "No command was given to run in the sandbox; put it after --, as in: corral sandbox run -- ls -la."
            raise UsageError(msg)
        if spec.egress is not None:
            bridge.check_socket(spec.egress)
        check_bwrap_files(spec, host_dirs=False)
        if not self._checked:
            self.check_engine()
            self._checked = True

    def check_engine(self) -> None:
        """Check that the engine answers, has the image, and knows the runtime; start nothing."""
        version = self.cli("version", "--format", "{{.Server.Version}}", check=False)
        if version.returncode != 0:
            msg = (
                f"The {self.engine} engine does not answer ({version.stderr.strip()}); start it, or point "
                f"{'DOCKER_HOST' if self.engine == 'docker' else 'CONTAINER_HOST'} at it."
            )
            raise SandboxUnavailableError(msg)
        if self.cli("image", "inspect", "--format", "{{.Id}}", self.image, check=False).returncode != 0:
            msg = (
                f"The image {self.image!r} is not in the {self.engine} engine; pull or build it first "
                f"(scripts/engine.sh image builds corral's)."
            )
            raise SandboxUnavailableError(msg)
        if self.runtime == "runsc" and not self.runtime_registered("runsc"):
            msg = (
                f"The gVisor runtime runsc is not registered with the {self.engine} engine; install it "
                "(https://gvisor.dev/docs/user_guide/install/) and register it, or use the runc runtime."
            )
            raise SandboxUnavailableError(msg)
        if self.runtime == "runsc" and not self.gvisor_loads_seccomp():
            msg = (
                "The docker engine runs runsc without --oci-seccomp, so corral's seccomp rules would not "
                "apply inside gVisor; register it with them (runsc install -- --oci-seccomp, then restart "
                "dockerd), or use the runc runtime."
            )
            raise SandboxUnavailableError(msg)

    def runtime_registered(self, runtime: str) -> bool:
        """Whether the engine knows ``runtime``: Docker lists its runtimes; Podman finds it (by its containers.conf)."""
        if self.engine == "podman":
            found = self.cli("--runtime", runtime, "info", "--format", "{{.Host.OCIRuntime.Name}}", check=False)
            return found.returncode == 0
        done = self.cli("info", "--format", "{{json .Runtimes}}", check=False)
        try:
            return done.returncode == 0 and runtime in json.loads(done.stdout or "{}")
        except ValueError:
            return False

    def gvisor_loads_seccomp(self) -> bool:
        """Whether runsc applies the container's seccomp profile: podman is told so on each run; Docker
        takes runtime flags only from its registration, which must include ``--oci-seccomp``."""
        if self.engine == "podman":
            return True
        done = self.cli("info", "--format", "{{json .Runtimes}}", check=False)
        try:
            args = json.loads(done.stdout or "{}").get("runsc", {}).get("runtimeArgs") or []
        except (ValueError, AttributeError):
            return False
        return any(arg.lstrip("-") in ("oci-seccomp", "oci-seccomp=true") for arg in args)

    def run(
        self,
        spec: SandboxSpec,
        *,
        on_output: OutputSink | None = None,
        stdin: int | None = None,
        on_start: Callable[[Supervised], None] | None = None,
        tty: int | None = None,
    ) -> RunResult:
        """Run ``spec`` to its end in a fresh container; see ``SandboxBackend.run``."""
        called = time.monotonic()
        self.check(spec)
        spec, before, layout = plan_run(spec, self.settings)
        if time.monotonic() - self._reaped_at > REAP_INTERVAL:
            self.reap()
        slot = slots.acquire(self.settings.runtime, self.settings.sandbox_slots)
        try:
            if slot.recorded:
                self.reap_slot(slot)
            return self._run_in_slot(spec, layout, before, slot, on_output, stdin, on_start, tty, called)
        finally:
            slot.release()

    def reap(self) -> list[str]:
        """Remove the containers (and ownership) callers left behind in slots nobody holds now."""
        self._reaped_at = time.monotonic()
        listed = self.cli("ps", "--all", "--filter", f"label={LABEL}", "--format", DIALECTS[self.engine].slot_label)
        found = {slots.check_index(name) for name in listed.stdout.split()}
        base = self.settings.sandbox_uid_base
        found |= {uid - base for uid in _uids().values() if base <= uid < base + self.settings.sandbox_slots}
        reaped: list[str] = []
        for index in sorted(i for i in found if i is not None):
            slot = slots.lock_if_free(self.settings.runtime / "slots", index)
            if slot is not None:
                try:
                    reaped += self.reap_slot(slot)
                finally:
                    slot.release()
        return reaped

    def reap_slot(self, slot: slots.Slot) -> list[str]:
        """Remove the containers and processes of a free ``slot`` whose holder died, and give its workspace back."""
        listed = self.cli("ps", "--all", "--quiet", "--filter", f"label={LABEL}={slot.name}")
        reaped = [f"container {cid}" for cid in listed.stdout.split()]
        if reaped:
            self._remove(*listed.stdout.split())
        uid = self.settings.sandbox_uid_base + slot.index
        for pid in [pid for pid, owner in _uids().items() if owner == uid]:  # a relay outlives its container
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            reaped.append(f"process {pid}")
        _clear_files(self.settings.runtime, slot.name)
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
        slot: slots.Slot,
        on_output: OutputSink | None,
        stdin: int | None,
        on_start: Callable[[Supervised], None] | None,
        tty: int | None,
        called: float,
    ) -> RunResult:
        is_root = os.geteuid() == 0
        host_uid = self.settings.sandbox_uid_base + slot.index if is_root else None
        user = (host_uid, host_uid) if host_uid is not None else (spec.uid, spec.gid)
        name = f"corral-{slot.name}-{secrets.token_hex(4)}"
        with contextlib.ExitStack() as undo:
            slot.record(container=name, engine=self.engine)
            undo.callback(self._remove, name)
            if host_uid is not None:
                owner = slots.take_owner(slot, spec.workspace, host_uid)
                undo.callback(slots.restore_owner, spec.workspace, host_uid, owner)
            files = _stage_files(self.settings.runtime, slot.name, spec.files, mask=bool(layout.masks))
            undo.callback(_clear_files, self.settings.runtime, slot.name)
            if spec.egress is not None and host_uid is not None:
                os.chown(spec.egress, host_uid, host_uid)
            argv = build_run_argv(
                spec,
                layout,
                engine=self.engine,
                image=self.image,
                runtime=self.runtime,
                name=name,
                slot=slot.name,
                user=user,
                profile=_profile(
                    self.settings.home / "cache",
                    seccomp.GVISOR_RULES if self.runtime == "runsc" else seccomp.DEFAULT_RULES,
                ),
                files=files,
                tty=tty is not None,
                interactive=tty is not None or stdin is not None,
                open_files=_open_files(),
            )
            cwd = _files_dir(self.settings.runtime, slot.name)  # the CLI's, and so podman's conmon's
            if self.engine == "podman":  # conmon 2.1 notes an OOM kill there (a file named oom), not where podman looks
                cwd.mkdir(parents=True, exist_ok=True, mode=0o700)
            proc = Supervised(
                argv,
                env=cli_env(self.environ, spec.full_env()),
                stdin=stdin,
                kill_tree=functools.partial(self._signal, name, 9),
                tty=tty,
                preexec=functools.partial(os.chdir, cwd) if self.engine == "podman" else None,
            )
            undo.callback(proc.abort)
            if spec.egress is not None and self.runtime == "runc":
                if host_uid is None:
                    msg = "Network egress for a container needs corral to run as root here; run as root."
                    raise SandboxUnavailableError(msg)
                relay = bridge.start_relay(spec.egress, _first_process(host_uid, proc), host_uid)
                undo.callback(bridge.stop_relay, relay)
                bridge.wait_listening(relay)
            proc.signal_tree = self._signaller(name, proc)
            if on_start is not None:
                on_start(proc)
            out, err = TailBuffer(self.settings.output_limit), TailBuffer(self.settings.output_limit)
            code = proc.pump(out, err, on_output, spec.limits.timeout)
            oom = code == OOM_EXIT and self._oom_killed(name, cwd / "oom")
        violations = remove_created(spec.workspace, before)
        duration = time.monotonic() - called  # the whole run: setup and cleanup too
        return _result(code, proc.killed_by, oom, duration, out, err, violations, slot.name)

    def _signal(self, name: str, signum: int) -> None:
        self.cli("kill", "--signal", str(signum), name, check=False)

    def _signaller(self, name: str, proc: Supervised) -> Callable[[int], None]:
        """Signals the container's command; a new window size goes to the engine's CLI, which resizes its tty."""

        def send(signum: int) -> None:
            if signum == signal.SIGWINCH:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signum)
            else:
                self._signal(name, signum)

        return send

    def _oom_killed(self, name: str, note: Path) -> bool:
        """Whether the kernel killed the container for memory: conmon left its ``note``, or the engine says so."""
        if note.exists():
            return True
        done = self.cli("inspect", "--format", "{{.State.OOMKilled}}", name, check=False)
        return done.stdout.strip() == "true"

    def _remove(self, *names: str) -> None:
        """Remove containers at once, running or not."""
        self.cli("rm", "--force", *DIALECTS[self.engine].remove_now, *names, check=False)


def _uids() -> dict[int, int]:
    """Every host process and its real uid."""
    found = {}
    with os.scandir("/proc") as entries:
        for entry in entries:
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    found[int(entry.name)] = entry.stat().st_uid
    return found


def _first_process(uid: int, proc: Supervised, timeout: float = 30.0) -> int:
    """The host pid of a process of the container: the only processes running as the slot's ``uid``."""
    own = Path("/proc/self/ns/net").stat().st_ino
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid, owner in _uids().items():
            with contextlib.suppress(OSError):
                if owner == uid and Path(f"/proc/{pid}/ns/net").stat().st_ino != own:
                    return pid
        if proc.popen.poll() is not None:
            break
        time.sleep(0.002)
    msg = "The container did not start (its engine reported no process for it); see the output above."
    raise SandboxError(msg)


def _files_dir(runtime: Path, slot_name: str) -> Path:
    return runtime / "container-files" / slot_name


def _stage_files(runtime: Path, slot_name: str, files: Mapping[Path, bytes], *, mask: bool) -> dict[Path, Path]:
    """Write each file to place (and the mask, if needed) into the slot's private directory."""
    if not files and not mask:
        return {}
    directory = _files_dir(runtime, slot_name)
    _clear_files(runtime, slot_name)
    directory.mkdir(parents=True, mode=0o700)
    staged = {}
    for number, (dest, data) in enumerate(sorted(files.items())):
        source = directory / f"{number}-{dest.name}"
        source.write_bytes(data)
        source.chmod(0o444)
        staged[dest] = source
    if mask:
        staged[MASK] = directory / "mask"
        staged[MASK].touch(mode=0o000)
    return staged


def _clear_files(runtime: Path, slot_name: str) -> None:
    import shutil

    shutil.rmtree(_files_dir(runtime, slot_name), ignore_errors=True)


@functools.cache
def _profile(cache_dir: Path, rules: tuple[seccomp.Rule, ...]) -> Path:
    """corral's seccomp rules as the engine's JSON profile, written once into the cache."""
    text = json.dumps(seccomp.engine_profile(rules), indent=1, sort_keys=True)
    path = cache_dir / f"seccomp-{seccomp.cache_key(rules)}.json"
    if not path.exists() or path.read_text() != text:
        cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        part = path.with_suffix(f".{os.getpid()}.part")
        part.write_text(text)
        part.replace(path)
    return path


def _result(
    code: int,
    killed_by: str | None,
    oom: bool,
    duration: float,
    out: TailBuffer,
    err: TailBuffer,
    violations: tuple[Violation, ...],
    sandbox_id: str,
) -> RunResult:
    reason, code, died_of = classify(code, killed_by, oom)
    return RunResult(
        exit_code=code,
        reason=reason,
        duration=duration,
        signal=died_of,
        stdout=out.getvalue(),
        stderr=err.getvalue(),
        stdout_dropped=out.dropped,
        stderr_dropped=err.dropped,
        limits_enforced=True,
        violations=violations,
        sandbox_id=sandbox_id,
    )


def _open_files() -> int:
    """corral's own hard limit on open files (at most a million): what a container may raise to."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
