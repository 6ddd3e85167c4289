"""corral's benchmarks: ``make bench`` (``python -m benchmarks``), or ``python -m benchmarks NAME``.

Each benchmark module has ``NAME``, ``TITLE`` and ``run(budget) -> Result``, measures its
baselines in the same run as its subject, and reports p50, p90, the ratios and whether each
target is met. None of them asserts. See ``docs/benchmarks.md``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ALL", "BARE_BWRAP", "DEFAULT", "REPO"]

REPO = Path(__file__).resolve().parent.parent

DEFAULT = (
    "sandbox_spawn",
    "bridged_spawn",
    "cli_start",
    "start_dry_run",
    "srt",
    "egress_proxy",
    "git_checkout",
    "job_overhead",
    "service_health",
    "service_jobs",
    "docker_start",
)
"""What ``python -m benchmarks`` runs with no names."""
ALL = (*DEFAULT, "phases")
"""``phases`` (where the time of one run goes) runs only when named."""

BARE_BWRAP = (
    "bwrap",
    "--unshare-all",
    "--die-with-parent",
    "--new-session",
    "--ro-bind",
    "/usr",
    "/usr",
    "--symlink",
    "usr/bin",
    "/bin",
    "--symlink",
    "usr/lib",
    "/lib",
    "--symlink",
    "usr/lib64",
    "/lib64",
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "--",
    "/usr/bin/true",
)
"""The baseline: bubblewrap with namespaces and nothing else corral adds (no seccomp, cgroups, uid drop)."""
