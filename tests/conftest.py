"""Shared fixtures. A tool the tests need that is missing fails the run in CI (CI=true) and skips elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.sandbox.bwrap import BwrapSandbox
from corral.settings import Settings
from tests.tools import IN_CI, require, require_root

__all__ = ["IN_CI", "require", "require_root"]


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
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    path.mkdir()
    return path
