"""``corral doctor``: a real capability probe, one line per capability, with the remedy for each gap.

It does not trust version strings: it starts a real sandbox through the same code path as every
run (user and network namespaces, a new /proc, the seccomp filter, cgroups, the host uid) and
reads back from inside what the kernel actually gave it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

from corral.errors import CorralError
from corral.settings import Settings

__all__ = ["Check", "run_checks"]

SLOW_MIGRATION_MS = 2.0
"""A cgroup migration after a pause slower than this waits for an RCU grace period."""


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    remedy: str = ""
    required: bool = True
    """A failed required check means sandboxes cannot run here."""


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def userns_remedy() -> str:
    """Why unprivileged user namespaces may be off here, and the switch that turns them on."""
    if _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        return (
            "AppArmor restricts unprivileged user namespaces (Ubuntu 23.10+): run "
            "'sysctl -w kernel.apparmor_restrict_unprivileged_userns=0', or install an AppArmor profile for bwrap"
        )
    if _read("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        return "run 'sysctl -w kernel.unprivileged_userns_clone=1'"
    if _read("/proc/sys/user/max_user_namespaces") == "0":
        return "run 'sysctl -w user.max_user_namespaces=15000'"
    return "check that the kernel allows unprivileged user namespaces (CONFIG_USER_NS) and that no LSM blocks bwrap"


def _uid_of(pid: int) -> int:
    try:
        return Path(f"/proc/{pid}").stat().st_uid
    except OSError:
        return -1


def _status_field(status: str, key: str) -> str:
    for line in status.splitlines():
        if line.startswith(f"{key}:"):
            return line.split(":", 1)[1].strip()
    return ""


def run_checks(settings: Settings) -> list[Check]:
    checks: list[Check] = []
    bwrap = shutil.which(settings.bwrap)
    if bwrap is None:
        checks.append(
            Check(
                "bubblewrap",
                False,
                f"{settings.bwrap!r} not found on PATH",
                "apt-get install --no-install-recommends bubblewrap (or dnf/pacman install bubblewrap)",
            )
        )
        return checks
    version = subprocess.run([bwrap, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    checks.append(Check("bubblewrap", True, f"{version} at {bwrap}"))

    from corral.sandbox import cgroups, seccomp

    try:
        seccomp.load_bpf(settings.home / "cache")
        checks.append(Check("seccomp", True, f"{len(seccomp.DEFAULT_RULES)} rules compiled to BPF"))
    except CorralError as err:
        checks.append(Check("seccomp", False, str(err), "apt-get install libseccomp2; pip install pyseccomp"))
        return checks

    driver = cgroups.detect()
    if driver.available:
        roles = ", ".join(sorted(driver.bases))
        checks.append(
            Check("cgroups", True, f"v{driver.version} ({roles}); memory, pids and cpu limits enforced", required=False)
        )
    else:
        checks.append(
            Check(
                "cgroups",
                False,
                f"limits unavailable: {driver.note}",
                "run corral as root, or on cgroup v2 give it a delegated group; sandboxes still run, "
                "without memory, pids and cpu limits",
                required=False,
            )
        )
    delay = cgroups.migration_ms(driver)
    if delay is not None:
        checks.append(migration_check(delay))
    checks.extend(_probe_sandbox(settings))
    checks.extend(_probe_bridge(settings))
    checks.extend(_probe_engine(settings, engine) for engine in ("docker", "podman"))
    return checks


def migration_check(delay_ms: float, root: Path = Path("/sys/fs/cgroup")) -> Check:
    """How long the first cgroup migration after a pause takes, and how to make it cheap (never required)."""
    detail = f"{delay_ms:.1f} ms to move a process into a group after 100 ms idle"
    if delay_ms < SLOW_MIGRATION_MS:
        return Check("cgroup migration", True, detail, required=False)
    boot = "boot with cgroup_favordynmods=true (kernel 6.7+)"
    if (root / "cgroup.controllers").exists():
        remedy = f"mount -o remount,favordynmods {root} (kernel 6.0+), or {boot}"
    elif (root / "unified" / "cgroup.controllers").exists():
        remedy = f"mount -o remount,favordynmods {root / 'unified'} (kernel 6.0+), or {boot}"
    else:
        remedy = boot
    return Check(
        "cgroup migration",
        False,
        f"{detail}: the kernel waits for an RCU grace period, which a sandbox start after a pause pays once",
        f"{remedy}; forks and exits then cost a little more",
        required=False,
    )


def _probe_engine(settings: Settings, engine: Literal["docker", "podman"]) -> Check:
    """Whether a container engine answers, for bottles with that backend (never required)."""
    name = f"{engine} engine"
    package = "docker.io" if engine == "docker" else "podman"
    if shutil.which(engine) is None:
        return Check(name, False, f"{engine} not found on PATH", f"apt-get install {package} (for bottles)", False)
    from corral.sandbox.container import ContainerSandbox

    sandbox = ContainerSandbox(settings, image="-", engine=engine)
    version = sandbox.cli("version", "--format", "{{.Server.Version}}", check=False)
    if version.returncode != 0:
        where = "DOCKER_HOST" if engine == "docker" else "CONTAINER_HOST"
        return Check(name, False, "the engine does not answer", f"start it, or point {where} at it", False)
    gvisor = "no runsc (gVisor)"
    if sandbox.runtime_registered("runsc"):
        gvisor = "runsc registered" + ("" if sandbox.gvisor_loads_seccomp() else " without --oci-seccomp (not usable)")
    return Check(name, True, f"server {version.stdout.strip()}; {gvisor}", required=False)


def _probe_bridge(settings: Settings) -> list[Check]:
    """The relay exists, and a bridged sandbox reaches the proxy and nothing else."""
    socat = shutil.which("socat")
    if socat is None:
        return [
            Check(
                "egress relay",
                False,
                "socat not found on PATH",
                "apt-get install --no-install-recommends socat",
                required=False,
            )
        ]
    if os.geteuid() != 0:
        return [
            Check(
                "egress bridge",
                False,
                "needs root (the relay joins the sandbox's network namespace)",
                "run corral as root for sandboxes with network; sandboxes without network run as is",
                required=False,
            )
        ]
    from corral.egress.door import Door
    from corral.egress.policy import Policy
    from corral.sandbox.bwrap import BwrapSandbox
    from corral.sandbox.spec import Limits, SandboxSpec

    # 203.0.113.1 is a documentation address: the proxy refuses it by policy, before any packet is sent.
    script = (
        "tail -n +2 /proc/net/route | wc -l; "
        "printf 'CONNECT 203.0.113.1:80 HTTP/1.1\\r\\nHost: 203.0.113.1:80\\r\\n\\r\\n' "
        "| socat -t 2 - TCP:127.0.0.1:3128 | head -n 1"
    )
    with (
        tempfile.TemporaryDirectory(prefix="corral-doctor-") as tmp,
        Door(settings.runtime, Policy(allow=["doctor.invalid"])) as door,
    ):
        spec = SandboxSpec(("sh", "-c", script), Path(tmp), egress=door.socket, limits=Limits(pids=64, timeout=10))
        try:
            result = door.with_violations(BwrapSandbox(settings).run(spec))
        except CorralError as err:
            return [Check("egress bridge", False, str(err), "see the error", required=False)]
    routes, _, reply = result.stdout.decode(errors="replace").partition("\n")
    denied = reply.startswith("HTTP/1.1 403") and any(v.target == "203.0.113.1:80" for v in result.violations)
    return [
        Check("egress relay", True, f"{socat}"),
        Check(
            "egress bridge",
            routes.strip() == "0" and denied,
            f"routes inside: {routes.strip() or '?'}; CONNECT to a host not allowed: {reply.strip() or 'no answer'}",
            "report this as a bug: a bridged sandbox must reach the proxy and nothing else",
            required=False,
        ),
    ]


def _probe_sandbox(settings: Settings) -> list[Check]:
    from corral.sandbox.bwrap import BwrapSandbox
    from corral.sandbox.spec import Limits, SandboxSpec

    script = "cat /proc/self/status; echo @@; cat /proc/net/dev"
    host_uids: list[int] = []
    with tempfile.TemporaryDirectory(prefix="corral-doctor-") as tmp:
        spec = SandboxSpec(("sh", "-c", script), Path(tmp), limits=Limits(memory=256 << 20, pids=64, timeout=10))
        try:
            result = BwrapSandbox(settings).run(spec, on_start=lambda proc: host_uids.append(_uid_of(proc.pid)))
        except CorralError as err:
            return [Check("sandbox", False, str(err), userns_remedy())]
    if result.exit_code != 0:
        detail = result.stderr.decode(errors="replace").strip() or f"exit {result.exit_code}"
        return [Check("user namespaces", False, detail, userns_remedy())]
    status, net_dev = result.stdout.decode(errors="replace").split("@@\n")
    host_uid = host_uids[0] if host_uids else -1
    interfaces = [line.split(":")[0].strip() for line in net_dev.splitlines()[2:]]
    checks = [
        Check("user namespaces", True, f"uid {_status_field(status, 'Uid').split()[0]} inside"),
        Check(
            "unprivileged host uid",
            host_uid > 0,
            f"the sandbox runs as host uid {host_uid}",
            "corral must never map a sandbox onto host root; report this as a bug",
        ),
        Check(
            "network namespace",
            interfaces == ["lo"],
            f"interfaces inside: {', '.join(interfaces) or 'none'}",
            "the kernel must support network namespaces (CONFIG_NET_NS)",
        ),
        Check("proc", bool(_status_field(status, "Pid")), "a new /proc is mounted"),
        Check(
            "no capabilities",
            _status_field(status, "CapEff") == "0000000000000000",
            f"CapEff {_status_field(status, 'CapEff')}, NoNewPrivs {_status_field(status, 'NoNewPrivs')}",
        ),
        Check(
            "seccomp filter",
            _status_field(status, "Seccomp") == "2",
            f"seccomp mode {_status_field(status, 'Seccomp')} in the sandbox",
            "the kernel must support seccomp filters (CONFIG_SECCOMP_FILTER)",
        ),
    ]
    if result.limits_enforced:
        peak = result.peak_memory or 0
        checks.append(
            Check(
                "cgroup limits",
                True,
                f"a sandbox group was created, limited and removed (peak {peak} bytes)",
                required=False,
            )
        )
    return checks


def is_ready(checks: list[Check]) -> bool:
    """Whether sandboxes can run here: every required check passed."""
    return all(check.ok for check in checks if check.required)
