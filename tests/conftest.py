"""Shared fixtures. A tool the tests need that is missing fails the run in CI (CI=true) and skips elsewhere."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.sandbox.bwrap import BwrapSandbox
from corral.settings import Settings

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


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with a private CORRAL_HOME and runtime dir, so tests never touch the user's."""
    home = tmp_path / "corral-home"
    home.mkdir()
    return Settings(home=home)


@pytest.fixture
def sandbox(settings: Settings) -> BwrapSandbox:
    require("bwrap")
    return BwrapSandbox(settings)


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "ws"
    path.mkdir()
    yield path
