"""An interactive session of a manifest's agent: its plan, name, directory and lock (``workcopy``: what it changed).

A session lives in ``CORRAL_HOME/sessions/<name>/``: ``box/`` is the sandbox's only writable
tree (``work/`` the workspace, ``agent/`` the Claude config, ``tmp/``), ``track.git`` a git
directory only the host sees, which records the workspace before and after (``--cwd``). The
lock ``sessions/<name>.lock`` is held (flock) while the session runs, so the directory of a
killed ``corral start`` is recognisable by its free lock and removed by the next one.

With ``--remote-control`` the session runs on the user's adopted claude.ai login instead of the
gateway (``remote_control``, ``claude_login``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from corral import remote_control
from corral.errors import ConflictError, SandboxUnavailableError, UsageError, WorkspaceError
from corral.manifest import Loaded, PromptFile, SshHost
from corral.sandbox.spec import SANDBOX_HOME, Limits, SandboxSpec

if TYPE_CHECKING:
    from corral.sandbox.base import SandboxBackend
    from corral.sandbox.container import Engine, Runtime
    from corral.settings import Settings

__all__ = [
    "Plan",
    "Session",
    "SessionDirs",
    "check_runtime",
    "check_startable",
    "egress_allow",
    "interactive_argv",
    "make_plan",
    "pick_name",
    "reap",
    "sandbox_for",
]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything ``corral start`` will do, decided before anything starts (pure data)."""

    agent: str
    name: str
    manifest: Path
    bottle: str
    backend: str
    image: str | None
    runtime: str
    workspace: Path
    copy_from: Path | None
    env_names: tuple[str, ...]
    skills: tuple[Path, ...]
    ssh: tuple[SshHost, ...]
    allow: tuple[str, ...]
    deny: tuple[str, ...]
    prompt: str | None
    model: str | None
    permission_mode: str
    limits: Limits
    mounts: tuple[Path, ...]
    remote_control: bool
    login: Path | None = None
    """With ``remote_control``: the directory of the adopted claude.ai login, if one is adopted."""


@dataclasses.dataclass(frozen=True)
class SessionDirs:
    """A session's directories on the host."""

    root: Path

    @property
    def box(self) -> Path:
        """The sandbox's writable tree (bound at the same path inside)."""
        return self.root / "box"

    @property
    def work(self) -> Path:
        return self.box / "work"

    @property
    def config(self) -> Path:
        return self.box / "agent"

    @property
    def tmp(self) -> Path:
        return self.box / "tmp"

    @property
    def track(self) -> Path:
        """The host-only git directory recording the workspace (never visible inside)."""
        return self.root / "track.git"


def sessions_dir(home: Path) -> Path:
    return home / "sessions"


def _busy(lock: Path) -> int | None:
    """The pid holding ``lock`` (a running session), else ``None``."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.read(fd, 32).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)
    return None


def _taken(home: Path, name: str) -> bool:
    """Whether a running session holds ``name`` (a leftover does not: the next start removes it)."""
    return _busy(sessions_dir(home) / f"{name}.lock") is not None


def pick_name(home: Path, agent: str, pinned: str | None = None) -> str:
    """``agent``, else ``agent-2``, ``-3``...: the first name no session has; a taken pinned name is refused."""
    if pinned is not None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,59}", pinned):
            msg = f"The session name {pinned!r} must be lower-case letters, digits, '-' or '_'; pick another."
            raise UsageError(msg)
        pid = _busy(sessions_dir(home) / f"{pinned}.lock")
        if pid is not None:
            stop = f"kill {pid}" if pid > 0 else "end that corral start"
            msg = f"The session {pinned!r} is running; end it first ({stop}), or start without --name."
            raise ConflictError(msg)
        return pinned
    name, number = agent, 1
    while _taken(home, name):
        number += 1
        name = f"{agent}-{number}"
    return name


def reap(home: Path, runtime: Path | None = None) -> list[str]:
    """Remove the sessions whose ``corral start`` is gone (their lock is free, their proxy socket); their names."""
    root = sessions_dir(home)
    if not root.is_dir():
        return []
    reaped = []
    for entry in sorted(root.iterdir()):
        name = entry.name.removesuffix(".lock")
        if entry.name.startswith(".") or (entry.is_dir() and (root / f"{name}.lock").exists()):
            continue  # a directory is judged by its lock
        session = Session.lock(home, name)
        if session is not None:
            session.remove()
            if runtime is not None:
                (runtime / "proxy" / f"session-{name}.sock").unlink(missing_ok=True)
            reaped.append(name)
    return reaped


class Session:
    """A claimed session name: the flock held, the directory ours until ``remove``."""

    def __init__(self, home: Path, name: str, fd: int) -> None:
        self.home = home
        self.name = name
        self.dirs = SessionDirs(sessions_dir(home) / name)
        self._fd = fd

    @classmethod
    def lock(cls, home: Path, name: str) -> Session | None:
        """Take the lock of ``name``, or ``None`` when a running session holds it."""
        root = sessions_dir(home)
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = root / f"{name}.lock"
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                same = path.stat().st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else a reaper unlinked it between our open and our lock: again
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                return cls(home, name, fd)
            os.close(fd)

    @classmethod
    def claim(cls, home: Path, agent: str, pinned: str | None = None, runtime: Path | None = None) -> Session:
        """Reap leftovers, then lock and create the session's directory under a free name."""
        reap(home, runtime)
        for _ in range(100):
            name = pick_name(home, agent, pinned)
            session = cls.lock(home, name)
            if session is not None:
                _remove_tree(session.dirs.root)  # a leftover that came between reap and lock
                for directory in (session.dirs.root, session.dirs.work, session.dirs.config, session.dirs.tmp):
                    directory.mkdir(mode=0o700, parents=True)
                session.dirs.root.chmod(0o711)  # the sandbox uid must reach box/
                return session
        msg = f"No free session name for {agent!r} was found; remove old ones under {sessions_dir(home)}."
        raise ConflictError(msg)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def remove(self) -> None:
        """Delete the session's directory and lock; the session is over."""
        _remove_tree(self.dirs.root)
        with contextlib.suppress(FileNotFoundError):
            (sessions_dir(self.home) / f"{self.name}.lock").unlink()
        self.release()


def _remove_tree(path: Path) -> None:
    """``rm -rf`` that also removes read-only directories the sandbox left."""
    import shutil

    def fix(func: Callable[..., object], target: str, _info: object) -> None:
        with contextlib.suppress(OSError):
            Path(target).parent.chmod(0o700)
            func(target)

    if path.exists():
        shutil.rmtree(path, onerror=fix)


def make_plan(
    loaded: Loaded,
    agent: str,
    *,
    home: Path,
    permission_mode: str,
    cwd: Path | None = None,
    remote_control: bool = False,
    name: str | None = None,
    defaults: Limits | None = None,
) -> Plan:
    """The plan of starting ``agent``: checks the names and paths it uses; starts and writes nothing."""
    manifest = loaded.manifest
    if agent not in manifest.agents:
        known = ", ".join(sorted(manifest.agents)) or "none"
        msg = f"The agent {agent!r} is not in {loaded.path}; add [agents.{agent}] or pick one of: {known}."
        raise UsageError(msg)
    spec = manifest.agents[agent]
    bottle = manifest.bottles[spec.bottle]
    skills = tuple(_existing(loaded.base, s, f"agents.{agent}.skills", directory=True) for s in spec.skills)
    mounts = tuple(_existing(loaded.base, m, f"bottles.{spec.bottle}.mounts") for m in bottle.mounts)
    prompt = spec.prompt
    if isinstance(prompt, PromptFile):
        prompt = _existing(loaded.base, prompt.file, f"agents.{agent}.prompt").read_text()
    from corral.units import parse_size

    memory = parse_size(bottle.memory, what=f"bottles.{spec.bottle}.memory") if bottle.memory else None
    session = name or pick_name(home, agent)
    if name is not None:
        pick_name(home, agent, name)
    login = None
    if remote_control:
        from corral.secrets import CredentialStore

        login = CredentialStore(home).adopted_dir()
    return Plan(
        agent=agent,
        name=session,
        manifest=loaded.path,
        bottle=spec.bottle,
        backend=bottle.backend,
        image=bottle.image,
        runtime=bottle.runtime,
        workspace=SessionDirs(sessions_dir(home) / session).work,
        copy_from=cwd,
        env_names=spec.env,
        skills=skills,
        ssh=spec.ssh,
        allow=bottle.allow,
        deny=bottle.deny,
        prompt=prompt,
        model=spec.model,
        permission_mode=spec.permission_mode or permission_mode,
        limits=_limits(memory, bottle.pids, bottle.cpus, defaults or Limits()),
        mounts=mounts,
        remote_control=remote_control,
        login=login,
    )


def _limits(memory: int | None, pids: int | None, cpus: float | None, defaults: Limits) -> Limits:
    """The bottle's limits, the settings' where the bottle names none."""
    return Limits(memory=memory or defaults.memory, pids=pids or defaults.pids, cpus=cpus or defaults.cpus)


def _existing(base: Path, given: str, key: str, *, directory: bool = False) -> Path:
    path = (base / Path(given).expanduser()).resolve()
    if not (path.is_dir() if directory else path.exists()):
        kind = "directory" if directory else "path"
        msg = f"The {kind} {given!r} in {key} does not exist (looked at {path}); fix the manifest."
        raise WorkspaceError(msg)
    return path


def check_runtime(plan: Plan, which: Callable[[str], str | None]) -> None:
    """Refuse the gVisor runtime where ``runsc`` is not on PATH (``which`` is ``shutil.which``)."""
    if plan.runtime == "runsc" and which("runsc") is None:
        msg = (
            f"The bottle {plan.bottle!r} asks for the gVisor runtime, but runsc is not on PATH; install it "
            '(https://gvisor.dev/docs/user_guide/install/) or set runtime = "runc".'
        )
        raise SandboxUnavailableError(msg)


def sandbox_for(plan: Plan, settings: Settings) -> SandboxBackend:
    """The backend the plan's bottle names: bubblewrap, or a container of its image on Docker or Podman."""
    if plan.backend == "bwrap":
        from corral.sandbox.bwrap import BwrapSandbox

        return BwrapSandbox(settings)
    from corral.sandbox.container import ContainerSandbox

    assert plan.image is not None  # the manifest requires one for the container backends
    engine: Engine = "podman" if plan.backend == "podman" else "docker"
    runtime: Runtime = "runsc" if plan.runtime == "runsc" else "runc"
    return ContainerSandbox(settings, image=plan.image, engine=engine, runtime=runtime)


def check_startable(plan: Plan, sandbox: SandboxBackend) -> None:
    """Refuse what cannot start here, before asking: an engine, image or runtime missing; for remote
    control, no adopted claude.ai login (or a broken one), or env names that would turn it off."""
    from corral.sandbox.container import ContainerSandbox

    if isinstance(sandbox, ContainerSandbox):
        sandbox.check_engine()
    if plan.remote_control:
        remote_control.check(plan.agent, plan.env_names, plan.login)


def env_values(names: tuple[str, ...], environ: Mapping[str, str], agent: str) -> dict[str, str]:
    """The host's values of the variables the agent names; a missing one is refused."""
    missing = [name for name in names if name not in environ]
    if missing:
        msg = f"The agent {agent!r} needs {', '.join(missing)} from the host, which is not set; export it first."
        raise UsageError(msg)
    return {name: environ[name] for name in names}


def ssh_config(hosts: tuple[SshHost, ...], relay: str) -> bytes:
    """``~/.ssh/config`` inside: each host through the relay's HTTP CONNECT (``relay`` is ``host:port``)."""
    host, port = relay.rsplit(":", 1)
    lines = []
    for entry in hosts:
        lines += [f"Host {entry.name}", f"  HostName {entry.host}", f"  Port {entry.port}"]
        lines += [f"  User {entry.user}"] if entry.user else []
        lines += [f"  ProxyCommand socat - PROXY:{host}:%h:%p,proxyport={port}", ""]
    return "\n".join(lines).encode()


def egress_allow(plan: Plan, gateway: str | None) -> tuple[str, ...]:
    """The session's allow list: the bottle's, then the gateway (``host:port``), or with remote control
    ``REMOTE_CONTROL_HOSTS``, then the ssh hosts. The bottle's deny list still wins over all of it."""
    reach = remote_control.REMOTE_CONTROL_HOSTS if plan.remote_control else (() if gateway is None else (gateway,))
    return (*plan.allow, *reach, *(host.target for host in plan.ssh))


def interactive_argv(binary: Path, plan: Plan) -> tuple[str, ...]:
    """The interactive ``claude`` command line of ``plan`` (no ``-p``: a session on the terminal)."""
    argv = [str(binary), "--permission-mode", plan.permission_mode]
    if plan.remote_control:
        argv += ["--remote-control", plan.name]  # the name claude.ai lists the session under
    if plan.model is not None:
        argv += ["--model", plan.model]
    if plan.prompt:
        argv += ["--append-system-prompt", plan.prompt]
    return tuple(argv)


@contextlib.contextmanager
def launch(
    plan: Plan,
    session: Session,
    settings: Settings,
    environ: Mapping[str, str],
    notify: Callable[[str], None] = lambda _: None,
) -> Iterator[SandboxSpec]:
    """The sandbox spec of the session, with its proxy, gateway and egress door open until the exit.

    The same parts as a job's (``JobRunner._run``): the real credential stays in the gateway on
    the host; the sandbox gets the gateway's URL and a placeholder. With remote control there is
    no gateway: the adopted claude.ai login is copied in, and on the exit (the sandbox is gone by
    then) ``notify`` hears what became of the login the session left.
    """
    import shutil

    from corral.agents.base import AgentRequest
    from corral.agents.claude_code import ARGV_PROMPT_LIMIT, MANAGED_SETTINGS_PATH, ClaudeCodeAgent
    from corral.egress.door import Door
    from corral.egress.policy import Policy
    from corral.egress.thread import ProxyThread
    from corral.runner.job import find_claude
    from corral.sandbox.bridge import RELAY_PORT

    if plan.prompt is not None and len(plan.prompt.encode()) > ARGV_PROMPT_LIMIT:
        msg = f"The prompt of {plan.agent!r} is {len(plan.prompt)} characters; keep it under 100 kB."
        raise UsageError(msg)
    dirs = session.dirs
    extra = env_values(plan.env_names, environ, plan.agent)
    agent = ClaudeCodeAgent(find_claude(settings))
    for skill in plan.skills:
        shutil.copytree(skill, dirs.config / "skills" / skill.name, symlinks=True, dirs_exist_ok=True)
    with contextlib.ExitStack() as stack:
        proxy = stack.enter_context(ProxyThread())
        if plan.remote_control:
            remote_control.login_in(settings.home, plan.login, dirs.config, stack, notify)
            # claude_code's builders insist on a credential variable; remote_control.adapt drops it again
            base_url, credential_env, gateway_at = remote_control.REMOTE_API_URL, {"CLAUDE_CODE_OAUTH_TOKEN": "-"}, None
        else:
            from corral.egress.gateway import Gateway
            from corral.secrets import resolve_credential

            gateway = Gateway(settings.anthropic_base_url, resolve_credential(settings.home, environ))
            proxy.call(gateway.start())
            stack.callback(lambda: proxy.call(gateway.aclose()))
            base_url, gateway_at = gateway.url, gateway.url.removeprefix("http://")
            credential_env = {gateway.credential.env_name: gateway.placeholder.reveal()}
        policy = Policy(allow=egress_allow(plan, gateway_at), deny=plan.deny)
        door = stack.enter_context(Door(settings.runtime, policy, proxy=proxy, name=f"session-{session.name}"))
        request = AgentRequest(
            prompt="(interactive session)",
            cwd=dirs.work,
            config_dir=dirs.config,
            tmp_dir=dirs.tmp,
            base_url=base_url,
            credential_env=credential_env,
            model=plan.model,
            permission_mode=plan.permission_mode,
            append_system_prompt=plan.prompt,
            env=extra,
        )
        agent.prepare(request, dirs.config)
        # the interactive CLI asks to confirm bypassPermissions unless the user settings say so
        (dirs.config / "settings.json").write_text('{"skipDangerousModePermissionPrompt": true}\n')
        invocation = agent.invocation(request)
        files, env = dict(invocation.files), dict(invocation.env)
        if plan.remote_control:
            env, files = remote_control.adapt(env, files, MANAGED_SETTINGS_PATH)
        if plan.ssh:
            files[Path(SANDBOX_HOME) / ".ssh" / "config"] = ssh_config(plan.ssh, f"127.0.0.1:{RELAY_PORT}")
        for dest in files:
            if dest.parent.is_relative_to("/etc") and not dest.parent.exists():
                dest.parent.mkdir(mode=0o755, parents=True)
        env["TERM"] = environ.get("TERM") or "xterm-256color"
        if "COLORTERM" in environ:
            env["COLORTERM"] = environ["COLORTERM"]
        yield SandboxSpec(
            command=interactive_argv(agent.binary, plan),
            workspace=dirs.box,
            cwd=dirs.work,
            ro_binds=(*invocation.ro_binds, *plan.mounts),
            env=env,
            files=files,
            egress=door.socket,
            limits=plan.limits,
        )
