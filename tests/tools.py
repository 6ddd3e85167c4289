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
"""The image ``scripts/engine.sh image`` builds (bookworm with python3, node, git, socat, curl), in both engines."""
ENGINE_HOST = os.environ.get("CORRAL_TEST_DOCKER_HOST", "unix:///run/corral-engine/docker.sock")
"""The private dockerd ``scripts/engine.sh start`` runs (no bridge, no iptables)."""
PODMAN_CONF = os.environ.get("CORRAL_TEST_CONTAINERS_CONF", "/run/corral-engine/containers.conf")
"""The tests' containers.conf for podman (``scripts/engine.sh podman-conf``): runc, and ulimits root may set here."""
ENGINES = ("docker", "podman")


def engine_env(engine: str) -> dict[str, str]:
    """The variables that point ``engine``'s CLI at the tests' engine (corral passes them on to it)."""
    return {"DOCKER_HOST": ENGINE_HOST} if engine == "docker" else {"CONTAINERS_CONF": PODMAN_CONF}


def require_engine(monkeypatch: pytest.MonkeyPatch, engine: str = "docker") -> None:
    """Point ``engine``'s CLI at the tests' engine; in CI an engine that does not answer or lacks the image fails."""
    import subprocess

    require(engine)
    env = engine_env(engine)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if engine == "podman" and not os.path.isfile(PODMAN_CONF):
        why = f"podman has no tests' containers.conf at {PODMAN_CONF}"
    else:
        done = subprocess.run(
            [engine, "image", "inspect", "--format", "{{.Id}}", ENGINE_IMAGE],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=False,
        )
        why = "" if done.returncode == 0 else f"{engine} has no image {ENGINE_IMAGE} ({done.stderr.strip()})"
    if why:
        if IN_CI:
            pytest.fail(f"{why}; `make test` must set it up (scripts/engine.sh image)")
        pytest.skip(why)


def engine_containers(engine: str, label: str) -> list[str]:
    """The names of the containers with ``label`` (``key`` or ``key=value``) in the tests' ``engine``."""
    import subprocess

    listed = subprocess.run(
        [engine, "ps", "--all", "--filter", f"label={label}", "--format", "{{.Names}}"],
        env={**os.environ, **engine_env(engine)},
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()
