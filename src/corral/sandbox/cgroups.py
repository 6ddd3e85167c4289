"""Resource limits through cgroups: v1, v2, or a clearly reported "unavailable".

``detect()`` reads ``/proc/self/cgroup`` and the cgroup mounts once and returns a driver:

- ``v2``: a unified hierarchy with the memory, pids and cpu controllers (most machines with
  systemd). Groups live under ``<mount>/corral``.
- ``v1``: separate memory, pids and cpu hierarchies, created below this process's own group in
  each. A hybrid host's unified mount, even without controllers, still gives ``cgroup.kill``.
- unavailable: no writable hierarchy (an unprivileged user without delegation). Sandboxes still
  run, and every run result and ``corral doctor`` say that limits are not enforced and why.

A sandbox's group is named after its slot (``corral/s7``), so the next start that takes the
slot finds and removes what a killed caller left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from corral.sandbox.process import pid_alive
from corral.sandbox.spec import Limits

__all__ = ["Cgroup", "CgroupDriver", "detect", "migration_ms", "parse_proc_cgroup"]

CPU_PERIOD_US = 100_000
V2_CONTROLLERS = ("memory", "pids", "cpu")
PROBE = "probe-"
"""The name of ``migration_ms``'s group, before the prober's pid (sandbox groups are ``s<slot>``)."""


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Map each controller (``""`` for the unified hierarchy) to this process's group path."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


@dataclasses.dataclass(frozen=True)
class Cgroup:
    """The groups of one sandbox, one per hierarchy; writes go straight to cgroupfs."""

    version: int
    memory: Path | None
    pids: Path | None
    cpu: Path | None
    unified: Path | None
    """A v2 group used only for ``cgroup.kill`` on a hybrid host."""

    def roles(self) -> dict[str, str]:
        """The group's directories by role, as a slot records them."""
        found = {"memory": self.memory, "pids": self.pids, "cpu": self.cpu, "unified": self.unified}
        return {role: str(path) for role, path in found.items() if path is not None}

    @classmethod
    def from_roles(cls, version: int, roles: dict[str, str]) -> Cgroup:
        def get(role: str) -> Path | None:
            return Path(roles[role]) if role in roles else None

        return cls(version, get("memory"), get("pids"), get("cpu"), get("unified"))

    @property
    def dirs(self) -> tuple[Path, ...]:
        return tuple(dict.fromkeys(d for d in (self.memory, self.pids, self.cpu, self.unified) if d is not None))

    def procs_files(self) -> tuple[Path, ...]:
        return tuple(d / "cgroup.procs" for d in self.dirs)

    def apply(self, limits: Limits) -> None:
        v2 = self.version == 2
        if self.memory is not None and limits.memory is not None:
            _write(self.memory / ("memory.max" if v2 else "memory.limit_in_bytes"), limits.memory)
            swap = self.memory / ("memory.swap.max" if v2 else "memory.memsw.limit_in_bytes")
            if swap.exists():
                _write(swap, 0 if v2 else limits.memory)
        if self.pids is not None and limits.pids is not None:
            _write(self.pids / "pids.max", limits.pids)
        if self.cpu is not None and limits.cpus is not None:
            quota = max(1000, int(limits.cpus * CPU_PERIOD_US))
            if v2:
                _write(self.cpu / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            else:
                _write(self.cpu / "cpu.cfs_period_us", CPU_PERIOD_US)
                _write(self.cpu / "cpu.cfs_quota_us", quota)

    def join(self, *pids: int) -> None:
        """Move processes into every hierarchy of the group."""
        for procs in self.procs_files():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):  # it died already; pump() reports it
                    _write(procs, pid)

    def pids_inside(self, *, first_only: bool = False) -> set[int]:
        """The processes in the group (each hierarchy holds the same ones; ``first_only`` reads one)."""
        found: set[int] = set()
        for procs in self.procs_files()[:1] if first_only else self.procs_files():
            with contextlib.suppress(OSError):
                found.update(int(line) for line in procs.read_text().split())
        return found

    def kill(self) -> None:
        """Kill every process in the groups, including ones that left their session."""
        for directory in (self.unified, self.memory if self.version == 2 else None):
            if directory is not None and (directory / "cgroup.kill").exists():
                with contextlib.suppress(OSError):
                    _write(directory / "cgroup.kill", 1)
        for _ in range(50):
            pids = self.pids_inside(first_only=True)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.002)

    def peak_memory(self) -> int | None:
        if self.memory is None:
            return None
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((self.memory / name).read_text())
        except (OSError, ValueError):
            return None

    def oom_kills(self) -> int:
        if self.memory is None:
            return 0
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        with contextlib.suppress(OSError):
            for line in (self.memory / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def remove(self) -> None:
        """Kill what is left inside and remove the groups; a group is busy for a moment after its
        last process exits. An empty group (the usual case: the sandbox's init took its namespace
        with it) goes at the first ``rmdir``, with no kill sweep."""
        for directory in self.dirs:
            for attempt in range(200):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as err:
                    if err.errno != errno.EBUSY:
                        raise
                    if attempt % 20 == 0:
                        self.kill()
                    time.sleep(0.0005 * (1 + attempt // 10))


def _write(path: Path, value: object) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


@dataclasses.dataclass(frozen=True)
class CgroupDriver:
    """Where this host's sandbox groups live, or why there are none."""

    version: int
    """2, 1, or 0 when unavailable."""
    bases: dict[str, Path]
    """Parent directory per role (``memory``, ``pids``, ``cpu``, ``unified``)."""
    note: str = ""

    @property
    def available(self) -> bool:
        return self.version != 0

    def group(self, name: str) -> Cgroup:
        """The (possibly not yet created) groups called ``name``."""
        paths = {role: base / name for role, base in self.bases.items()}
        return Cgroup(self.version, paths.get("memory"), paths.get("pids"), paths.get("cpu"), paths.get("unified"))

    def create(self, name: str, limits: Limits) -> Cgroup:
        if self.version == 2:
            self._enable_v2_controllers()
        group = self.group(name)
        for directory in group.dirs:
            directory.mkdir(parents=True, exist_ok=True)
        try:
            group.apply(limits)
        except OSError:
            group.remove()
            raise
        return group

    def _enable_v2_controllers(self) -> None:
        base = self.bases["memory"]
        control = base / "cgroup.subtree_control"
        if control.exists() and set(V2_CONTROLLERS) <= set(control.read_text().split()):
            return
        base.mkdir(parents=True, exist_ok=True)
        for directory in (base.parent, base):
            _write(directory / "cgroup.subtree_control", " ".join(f"+{c}" for c in V2_CONTROLLERS))

    def leftovers(self) -> Iterator[str]:
        """Names of sandbox groups that exist now."""
        seen: set[str] = set()
        for base in self.bases.values():
            with contextlib.suppress(OSError):
                for entry in base.iterdir():
                    if entry.is_dir() and entry.name not in seen:
                        seen.add(entry.name)
                        yield entry.name


def detect(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: str | None = None) -> CgroupDriver:
    """Find where this process can create sandbox cgroups."""
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            return CgroupDriver(0, {}, "/proc/self/cgroup cannot be read")
    own = parse_proc_cgroup(proc_cgroup)
    if (root / "cgroup.controllers").exists():
        controllers = set((root / "cgroup.controllers").read_text().split())
        missing = set(V2_CONTROLLERS) - controllers
        if missing:
            return CgroupDriver(0, {}, f"cgroup v2 lacks the {', '.join(sorted(missing))} controller(s)")
        if not os.access(root, os.W_OK):
            return CgroupDriver(
                0,
                {},
                "cgroup v2 is not writable by this user; run corral as root, or give it "
                "a delegated group (systemd-run --user -p Delegate=yes)",
            )
        base = root / "corral"
        return CgroupDriver(2, {"memory": base, "pids": base, "cpu": base})
    bases: dict[str, Path] = {}
    for controller in ("memory", "pids", "cpu"):
        mount = root / controller
        if controller in own and mount.is_dir() and os.access(mount / own[controller].lstrip("/"), os.W_OK):
            bases[controller] = mount / own[controller].lstrip("/") / "corral"
    if "memory" not in bases or "pids" not in bases:
        return CgroupDriver(
            0, {}, "the cgroup v1 memory and pids hierarchies are not writable by this user; run corral as root"
        )
    unified = root / "unified" / own.get("", "/").lstrip("/")
    if "" in own and (unified / "cgroup.procs").exists() and os.access(unified, os.W_OK):
        bases["unified"] = unified / "corral"
    return CgroupDriver(1, bases)


def migration_ms(driver: CgroupDriver, *, idle: float = 0.1, samples: int = 3) -> float | None:
    """Median milliseconds one move of a process into a sandbox group takes after ``idle`` seconds
    without one; ``None`` where no group can be made.

    Every sandbox start moves bwrap's sandbox into its group. Unless a cgroup hierarchy is mounted
    with ``favordynmods``, the kernel makes the first such move after a pause wait for an RCU
    grace period (several ms; ~0.3 ms with it).
    """
    if not driver.available:
        return None
    for name in list(driver.leftovers()):  # the probe of a doctor that was killed
        pid = name.removeprefix(PROBE)
        if name.startswith(PROBE) and pid.isdigit() and not pid_alive(int(pid)):
            driver.group(name).remove()
    group = driver.group(f"{PROBE}{os.getpid()}")
    directory = group.pids or group.memory
    assert directory is not None
    times: list[float] = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for _ in range(samples):
            with subprocess.Popen(["sleep", "10"], stdin=subprocess.DEVNULL) as child:
                try:
                    time.sleep(idle)
                    started = time.perf_counter()
                    _write(directory / "cgroup.procs", child.pid)
                    times.append((time.perf_counter() - started) * 1000)
                finally:
                    child.kill()
    except OSError:
        return None
    finally:
        group.remove()
    return statistics.median(times)
