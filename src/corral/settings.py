"""Settings: ``CORRAL_*`` environment over ``corral.toml`` over defaults, read once.

The ``[settings]`` table of ``corral.toml`` (found in the current directory or a parent, or
named by ``CORRAL_CONFIG``) uses the field names below; the environment uses the same names
upper-cased with a ``CORRAL_`` prefix (``memory`` → ``CORRAL_MEMORY``). Unknown keys are
errors, never ignored.

This module is on the path of every CLI call, so it uses a frozen dataclass and ``tomllib``
rather than pydantic: a sandbox must start in well under 150 ms as a whole process.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from corral.errors import BadLimitError, SettingsError
from corral.units import parse_duration, parse_size

__all__ = ["Settings", "find_config", "get_settings", "load_settings"]

CONFIG_NAME = "corral.toml"


def _default_home() -> Path:
    return Path.home() / ".local" / "share" / "corral"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting corral reads; see ``docs/settings.md``."""

    home: Path = dataclasses.field(default_factory=_default_home)
    """Where corral keeps its store, caches, credentials and logs (``CORRAL_HOME``)."""
    runtime_dir: Path | None = None
    """Locks of running sandboxes; default ``/run/corral`` for root, else ``HOME/run``."""
    bwrap: str = "bwrap"
    """The bubblewrap binary."""
    sandbox_uid_base: int = 1_800_000_000
    """When corral runs as root, sandbox slot N runs as the unprivileged host uid BASE+N."""
    sandbox_slots: int = 256
    """How many sandboxes may run at once on this host."""
    memory: int | None = 4 << 30
    """Default memory limit of a sandbox in bytes (``CORRAL_MEMORY=2G``)."""
    pids: int | None = 1024
    """Default limit on processes and threads inside a sandbox."""
    cpus: float | None = None
    """Default CPU share of a sandbox in cores (``1.5``); none means unlimited."""
    timeout: float | None = None
    """Default wall-clock timeout of a sandboxed command in seconds."""
    output_limit: int = 1 << 20
    """Bytes of stdout and of stderr kept in a run result (the tail is kept)."""
    database_url: str = ""
    """The job store (SQLAlchemy URL); empty means SQLite at ``HOME/corral.db``."""
    claude_bin: str = ""
    """The Claude Code CLI; empty means the pinned one the Makefile installs, else ``claude`` on PATH."""
    anthropic_base_url: str = "https://api.anthropic.com"
    """Where the API gateway forwards the agent's Messages API requests."""
    git_allow_local: bool = False
    """Whether jobs may use ``file://`` URLs and local paths as repositories."""
    git_author: str = "corral <corral@localhost>"
    """``Name <email>`` of the commits corral makes on job branches."""
    git_refresh_interval: float = 2.0
    """Seconds a mirror fetched that recently is used as it is (a ref it lacks is fetched anyway); 0 = always fetch."""
    job_timeout: float | None = 3600.0
    """Default wall-clock limit of a job's agent run in seconds."""
    idle_timeout: float | None = 600.0
    """Seconds an agent may go without printing anything before it is stopped."""
    startup_timeout: float | None = 300.0
    """Seconds an agent may take to report that it started (Claude Code's ``system/init``)."""
    permission_mode: str = "bypassPermissions"
    """The Claude Code permission mode inside the sandbox (the sandbox is the boundary)."""
    capacity: int = 4
    """Jobs the embedded runner of ``corral serve`` runs at once."""
    requeue_interrupted: int = 1
    """Times a job interrupted by a crash or a drain is queued again before it fails."""
    runner_secret: str = dataclasses.field(default="", repr=False)
    """When set, the service's routes need it in the ``X-Runner-Secret`` header."""
    url: str = ""
    """A running ``corral serve`` that ``corral jobs`` talks to instead of the local store."""

    @property
    def runtime(self) -> Path:
        if self.runtime_dir is not None:
            return self.runtime_dir
        return Path("/run/corral") if os.geteuid() == 0 else self.home / "run"


_FIELDS = {field.name: field for field in dataclasses.fields(Settings)}


def _convert(name: str, value: Any, source: str) -> Any:
    """Turn a raw value from the environment or TOML into the field's type."""
    kind = str(_FIELDS[name].type)
    if value in ("", "none") and "None" in kind:
        return None
    try:
        if name == "memory" or name == "output_limit":
            return parse_size(value, what=f"setting {name!r}")
        if name.endswith("timeout") or name.endswith("interval"):
            return parse_duration(value, what=f"setting {name!r}")
        if kind.startswith("bool"):
            return _boolean(value)
        if kind.startswith("Path"):
            return Path(str(value)).expanduser()
        if kind.startswith("int"):
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind.startswith("float"):
            return float(value)
        return str(value)
    except BadLimitError as err:
        msg = f"The setting {name!r} from {source} is invalid: {err}"
        raise SettingsError(msg) from None
    except (ValueError, TypeError):
        msg = f"The setting {name!r} from {source} has the value {value!r}, which is not a {kind.split()[0]}."
        raise SettingsError(msg) from None


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def find_config(start: Path) -> Path | None:
    """The nearest ``corral.toml`` in ``start`` or one of its parents."""
    for directory in (start, *start.parents):
        candidate = directory / CONFIG_NAME
        if candidate.is_file():
            return candidate
    return None


def _read_toml(path: Path) -> Mapping[str, Any]:
    import tomllib

    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as err:
        msg = f"The settings file {path} cannot be read ({err.strerror}); fix its permissions or unset CORRAL_CONFIG."
        raise SettingsError(msg) from None
    except tomllib.TOMLDecodeError as err:
        msg = f"The settings file {path} is not valid TOML: {err}."
        raise SettingsError(msg) from None
    table = data.get("settings", {})
    if not isinstance(table, dict):
        msg = f"In {path}, 'settings' must be a table ([settings])."
        raise SettingsError(msg)
    return table


def load_settings(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Settings:
    """Build the settings from the environment, the nearest ``corral.toml`` and the defaults."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config = Path(environ["CORRAL_CONFIG"]) if "CORRAL_CONFIG" in environ else find_config(cwd or Path.cwd())
    if config is not None:
        for key, value in _read_toml(config).items():
            if key not in _FIELDS:
                known = ", ".join(sorted(_FIELDS))
                msg = f"The setting {key!r} in {config} is unknown; the settings are: {known}."
                raise SettingsError(msg)
            values[key] = _convert(key, value, str(config))
    for key in _FIELDS:
        env_name = f"CORRAL_{key.upper()}"
        if env_name in environ:
            values[key] = _convert(key, environ[env_name], env_name)
    return Settings(**values)


@functools.cache
def get_settings() -> Settings:
    """The settings of this process, read once."""
    return load_settings()
