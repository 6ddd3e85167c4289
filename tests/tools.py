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


ENGINE_IMAGE = os.environ.get("CORRAL_ENGINE_IMAGE", "corral-sandbox:bookworm")
"""The image ``scripts/engine.sh image`` builds (bookworm with python3, node, git, socat, curl)."""
ENGINE_HOST = os.environ.get("CORRAL_TEST_DOCKER_HOST", "unix:///run/corral-engine/docker.sock")
"""The private dockerd ``scripts/engine.sh start`` runs (no bridge, no iptables)."""


def require_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the docker CLI at the tests' engine; in CI an engine that does not answer or lacks the image fails."""
    import subprocess

    require("docker")
    monkeypatch.setenv("DOCKER_HOST", ENGINE_HOST)
    done = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", ENGINE_IMAGE], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        why = f"the engine at {ENGINE_HOST} has no image {ENGINE_IMAGE} ({done.stderr.strip()})"
        if IN_CI:
            pytest.fail(f"{why}; `make test` must start it and build the image (scripts/engine.sh image)")
        pytest.skip(why)
