"""The ``corral.toml`` manifest: named agents and the bottles (sandboxes) they run in.

``[agents.NAME]`` says what runs (``bottle``, ``env`` names, ``skills``, ``prompt``, ``ssh``
hosts, ``model``, ``permission_mode``); ``[bottles.NAME]`` says where (``backend``, ``image``,
``runtime``, egress ``allow``/``deny``, limits, read-only ``mounts``). The ``[settings]`` table of
the same file belongs to ``corral.settings``. Unknown keys are errors; every error is one
sentence naming the key, the file and the line.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from corral.errors import UsageError
from corral.settings import find_config

__all__ = ["Agent", "Bottle", "Manifest", "ManifestError", "PromptFile", "SshHost", "find_line", "load_manifest"]

_NAME = r"^[a-z0-9][a-z0-9_-]{0,39}$"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ManifestError(UsageError):
    """A mistake in ``corral.toml``; the message names the key, the file and the line."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PromptFile(_Model):
    """``prompt = { file = "notes.md" }``: the text of a file (relative to the manifest)."""

    file: str


class SshHost(_Model):
    """One host the agent reaches with ssh, through the proxy (``ProxyCommand`` to the relay)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    host: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]*$")
    port: int = Field(default=22, ge=1, le=65535)
    user: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]+$")

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"


class Agent(_Model):
    """``[agents.NAME]``: what runs in the bottle."""

    bottle: str
    env: tuple[str, ...] = ()
    """Names only; the values are read from the host environment at start."""
    skills: tuple[str, ...] = ()
    """Directories copied into the session's Claude config (``skills/<dir name>``)."""
    prompt: str | PromptFile | None = None
    """Text appended to the system prompt, or ``{ file = "..." }``."""
    ssh: tuple[SshHost, ...] = ()
    model: str | None = None
    permission_mode: str | None = None

    @field_validator("env")
    @classmethod
    def _env_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not _ENV_NAME.fullmatch(name):
                msg = f"{name!r} is not a variable name; give names only (the value comes from the host)"
                raise ValueError(msg)
        return names

    @field_validator("permission_mode")
    @classmethod
    def _mode(cls, mode: str | None) -> str | None:
        from corral.agents.claude_code import PERMISSION_MODES

        if mode is not None and mode not in PERMISSION_MODES:
            msg = f"{mode!r} is not a permission mode; use one of {', '.join(PERMISSION_MODES)}"
            raise ValueError(msg)
        return mode


class Bottle(_Model):
    """``[bottles.NAME]``: the sandbox an agent runs in."""

    backend: Literal["bwrap", "docker", "podman"] = "bwrap"
    image: str | None = None
    runtime: Literal["runc", "runsc"] = "runc"
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    memory: str | None = None
    pids: int | None = Field(default=None, ge=1)
    cpus: float | None = Field(default=None, gt=0)
    mounts: tuple[str, ...] = ()
    """Extra host paths shown read-only at the same path inside."""

    @model_validator(mode="after")
    def _backend_fields(self) -> Bottle:
        if self.backend == "bwrap" and self.image is not None:
            msg = "image is for the docker and podman backends; drop it, or set backend to docker or podman"
            raise ValueError(msg)
        if self.backend == "bwrap" and self.runtime != "runc":
            msg = "runtime is for the docker and podman backends (bwrap has none); drop it or change the backend"
            raise ValueError(msg)
        if self.backend != "bwrap" and self.image is None:
            msg = f'the {self.backend} backend needs an image, e.g. image = "debian:12"'
            raise ValueError(msg)
        return self


class Manifest(_Model):
    """The whole ``corral.toml``; ``path`` is where it was read from."""

    agents: dict[str, Agent] = Field(default_factory=dict)
    bottles: dict[str, Bottle] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)
    """Read by ``corral.settings``; not checked here."""

    @field_validator("agents", "bottles")
    @classmethod
    def _names(cls, table: dict[str, Any]) -> dict[str, Any]:
        for name in table:
            if not re.fullmatch(_NAME, name):
                msg = f"the name {name!r} must be 1-40 lower-case letters, digits, '-' or '_'"
                raise ValueError(msg)
        return table


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A checked manifest and where it came from."""

    manifest: Manifest
    path: Path

    @property
    def base(self) -> Path:
        """The directory relative paths in the manifest start from."""
        return self.path.parent


def _header(line: str) -> tuple[str, ...] | None:
    match = re.match(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$", line)
    return None if match is None else _dotted(match[1])


def _dotted(text: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in re.findall(r'"[^"]*"|\'[^\']*\'|[^.]+', text))


def find_line(text: str, loc: Sequence[str | int]) -> int | None:
    """The 1-based line of the key at ``loc`` in TOML ``text``, else of its nearest table or key above.

    A scan, not a parse: table headers set the prefix, ``key = ...`` lines (dotted too) add to it.
    """
    want = tuple(str(part) for part in loc if isinstance(part, str))
    best, best_len = None, 0
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), 1):
        header = _header(line)
        if header is not None:
            table, path = header, header
        else:
            match = re.match(r"^\s*((?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_.\- ])+?)\s*=", line)
            if match is None:
                continue
            path = (*table, *_dotted(match[1]))
        common = 0
        for have, need in zip(path, want, strict=False):
            if have != need:
                break
            common += 1
        if common == len(path) and common > best_len:
            best, best_len = number, common
    return best


def _sentence(error: Mapping[str, Any], path: Path, text: str) -> str:
    loc = [str(part) for part in error["loc"] if isinstance(part, str)]
    key = ".".join(loc) or "(top level)"
    line = find_line(text, error["loc"])
    where = f"{path}, line {line}" if line is not None else str(path)
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"The key {key!r} in {where} is unknown; remove it or fix its spelling."
    if kind == "missing":
        return f"The key {key!r} is missing in {where}; add it."
    reason = str(error["msg"]).removeprefix("Value error, ")
    return f"The key {key!r} in {where} is invalid: {reason}."


def parse_manifest(text: str, path: Path) -> Manifest:
    """Check the TOML ``text`` of ``path``; a mistake raises ``ManifestError`` naming key, file and line."""
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        msg = f"The manifest {path} is not valid TOML: {err}; fix that line."
        raise ManifestError(msg) from None
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as err:
        raise ManifestError(_sentence(err.errors()[0], path, text)) from None
    for name, agent in manifest.agents.items():
        if agent.bottle not in manifest.bottles:
            known = ", ".join(sorted(manifest.bottles)) or "none"
            line = find_line(text, ("agents", name, "bottle"))
            msg = (
                f"The key 'agents.{name}.bottle' in {path}, line {line} names the bottle {agent.bottle!r}, "
                f"which is not defined; add [bottles.{agent.bottle}] or use one of: {known}."
            )
            raise ManifestError(msg)
    return manifest


def load_manifest(path: Path | None = None, *, cwd: Path | None = None) -> Loaded:
    """The manifest at ``path``, else the nearest ``corral.toml`` in ``cwd`` or its parents."""
    if path is None:
        path = find_config(cwd or Path.cwd())
        if path is None:
            msg = f"No corral.toml was found in {cwd or Path.cwd()} or its parents; write one or give --manifest."
            raise ManifestError(msg)
    try:
        text = path.read_text()
    except OSError as err:
        msg = f"The manifest {path} cannot be read ({err.strerror}); check the path given to --manifest."
        raise ManifestError(msg) from None
    return Loaded(parse_manifest(text, path), path.resolve())
