"""Facts about the machine that decide the figures, printed above every run and kept in the JSON.

One fact is measured rather than read: how long moving a process into a cgroup takes after the
host has been idle. On most kernels the first migration after ~20 ms without one waits for an RCU
grace period (several ms, e.g. ~7 ms on the reference VM), and every sandbox start pays it once;
with the ``favordynmods`` cgroup mount option it costs well under 1 ms. On kernels >= 6.17 that
mode cannot be turned off again until reboot and ``/proc/mounts`` may no longer show it, so the
only reliable way to know which case a run measured is to time it.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["describe", "machine_info", "migration_probe"]


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory() -> str:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            kib = int(line.split()[1])
            return f"{kib / (1 << 20):.1f} GiB"
    return "unknown"


def _bwrap_version() -> str:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "not installed"
    try:
        return subprocess.run([bwrap, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError as err:
        return f"unusable ({err})"


def _cgroup_mode() -> str:
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():
        mode = "v2"
    elif (root / "unified").is_dir():
        mode = "v1 (hybrid)"
    elif (root / "memory").is_dir():
        mode = "v1"
    else:
        mode = "none"
    favor = any("favordynmods" in line for line in _read("/proc/self/mountinfo").splitlines() if " - cgroup" in line)
    return mode + (", favordynmods in mountinfo" if favor else "")


def machine_info() -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory": _memory(),
        "kernel": platform.release(),
        "os": _os_name(),
        "bwrap": _bwrap_version(),
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "user": f"uid {os.geteuid()}",
        "cgroups": _cgroup_mode(),
        "loadavg": " ".join(_read("/proc/loadavg").split()[:3]),
        "cgroup_migration_after_idle_ms": _rounded(migration_probe()),
    }


def _os_name() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return platform.system()


def describe(info: dict[str, Any]) -> list[str]:
    probe = info["cgroup_migration_after_idle_ms"]
    probe_text = "n/a (needs root and a writable cgroup hierarchy)" if probe is None else f"{probe:.2f} ms"
    lines = [
        f"date: {info['date']}   load average: {info['loadavg']}",
        f"machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']} RAM, {info['os']}, kernel {info['kernel']}",
        f"tools: {info['bwrap']}; {info['python']}; running as {info['user']}",
        f"cgroups: {info['cgroups']}; one cgroup migration after 100 ms idle: {probe_text}",
    ]
    load = float(info["loadavg"].split()[0]) if info["loadavg"] else 0.0
    if load > 0.5 * (info["nproc"] or 1):
        lines.append(
            f"NOTE: load average {load:.2f} on {info['nproc']} CPUs: other work is running, so absolute "
            "figures are noisy (the same-run ratios much less so)"
        )
    return lines


def _probe_dir() -> Path | None:
    """A scratch group next to this process's own, in a hierarchy where moving a process is plain."""
    root = Path("/sys/fs/cgroup")
    own: dict[str, str] = {}
    for line in _read("/proc/self/cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            own[controller] = path
    if (root / "pids").is_dir() and "pids" in own:  # v1
        return root / "pids" / own["pids"].lstrip("/") / "corral-bench-probe"
    if (root / "unified").is_dir() and "" in own:  # hybrid: a v2 tree without controllers
        return root / "unified" / own[""].lstrip("/") / "corral-bench-probe"
    return None  # pure v2: a child of our own group may not take processes (no internal processes)


def migration_probe(idle: float = 0.1, samples: int = 3) -> float | None:
    """Median milliseconds of one cgroup migration after ``idle`` seconds without one; ``None`` if impossible."""
    if os.geteuid() != 0:
        return None
    directory = _probe_dir()
    if directory is None:
        return None
    try:
        directory.mkdir(exist_ok=True)
    except OSError:
        return None
    child = subprocess.Popen(["sleep", "30"])
    timings: list[float] = []
    try:
        procs = directory / "cgroup.procs"
        home = directory.parent / "cgroup.procs"
        for _ in range(samples):
            time.sleep(idle)
            start = time.perf_counter()
            procs.write_text(str(child.pid))
            timings.append(time.perf_counter() - start)
            home.write_text(str(child.pid))
    except OSError:
        return None
    finally:
        child.kill()
        child.wait()
        for _ in range(200):
            try:
                directory.rmdir()
                break
            except OSError as err:
                if err.errno != errno.EBUSY:
                    break
                time.sleep(0.005)
        with contextlib.suppress(OSError):
            directory.rmdir()
    timings.sort()
    return timings[len(timings) // 2] * 1000


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
