"""Facts about the machine that decide the figures, printed above every run and kept in the JSON.

One fact is measured rather than read: how long moving a process into a cgroup takes after the
host has been idle. On most kernels the first migration after ~20 ms without one waits for an RCU
grace period (several ms, e.g. ~7 ms on the reference VM), and every sandbox start pays it once;
with the ``favordynmods`` cgroup mount option it costs well under 1 ms. On kernels >= 6.17 that
mode cannot be turned off again until reboot and ``/proc/mounts`` may no longer show it, so the
only reliable way to know which case a run measured is to time it.
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["describe", "machine_info"]


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
        "cgroup_migration_after_idle_ms": _rounded(_migration_ms()),
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


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _migration_ms() -> float | None:
    """``corral doctor``'s probe: one cgroup migration after 100 ms idle, in ms (``None`` without cgroups)."""
    from corral.sandbox import cgroups

    return cgroups.migration_ms(cgroups.detect())
