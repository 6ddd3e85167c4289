"""Helpers for tests: a tool the tests need that is missing fails the run in CI (CI=true) and skips elsewhere."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(tool: str) -> str:
    """The path of ``tool``; in CI its absence is a setup bug and fails the test."""
    path = shutil.which(tool)
    if path is None:
        if IN_CI:
            pytest.fail(f"{tool} is not installed; `make test` must install it (CI=true never skips)")
        pytest.skip(f"{tool} is not installed")
    return path


def require_root() -> None:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI runs the tests as root; this run is not root")
        pytest.skip("needs root (cgroups and a separate host uid)")
