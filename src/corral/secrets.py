"""Secrets: a value whose repr is masked, unwrapped only where it is injected, and where it comes from.

``Secret`` keeps a credential out of logs, events, reprs and tracebacks: ``str`` and ``repr``
show ``***``, it cannot be pickled, and ``reveal()`` is the one way to the value, called only at
the point of injection (an HTTP header on the host, a ``GIT_ASKPASS`` answer).

``Credential`` is the Claude credential the API gateway puts on the agent's requests, and
``resolve_credential`` finds it: a token stored with ``corral auth set-token`` or a Claude Code
login adopted with ``corral auth import-claude-dir`` first, else ``ANTHROPIC_API_KEY``, else
``CLAUDE_CODE_OAUTH_TOKEN`` from the host's environment. ``CredentialStore`` keeps the stored
ones under ``HOME/credentials/`` (see ``docs/auth.md``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NoReturn, cast

from corral.errors import CredentialsError, UsageError

__all__ = [
    "Credential",
    "CredentialStore",
    "Kind",
    "Secret",
    "kind_of",
    "read_claude_login",
    "resolve_credential",
    "write_json_private",
]

Kind = Literal["oauth_token", "api_key"]
KINDS: tuple[Kind, ...] = ("oauth_token", "api_key")
ENV_NAMES: Mapping[Kind, str] = {"api_key": "ANTHROPIC_API_KEY", "oauth_token": "CLAUDE_CODE_OAUTH_TOKEN"}
GIT_TOKEN_ENV = "CORRAL_GIT_TOKEN"
LOGIN_FILE = ".credentials.json"
NO_CREDENTIAL = (
    "No Claude credential is configured; run `corral auth set-token` (from `claude setup-token`) "
    "or set ANTHROPIC_API_KEY."
)


class Secret:
    """A secret string; compare with ``==`` (constant time), read with ``reveal()``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(Secret)

    def __reduce__(self) -> NoReturn:
        msg = "A Secret cannot be pickled; pass it where it is used."
        raise TypeError(msg)


_LABELS: Mapping[Kind, str] = {"oauth_token": "an OAuth token (sk-ant-oat...)", "api_key": "an API key (sk-ant-api...)"}


@dataclasses.dataclass(frozen=True)
class Credential:
    """A Claude credential and where it came from; the value stays inside ``secret``."""

    kind: Kind
    secret: Secret
    source: str
    """Where it came from: ``stored token``, ``claude login at DIR``, ``environment ANTHROPIC_API_KEY``..."""
    expires_at: datetime | None = None
    """When it stops working; known for adopted Claude Code logins only."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            msg = f"The credential kind {self.kind!r} is unknown; use oauth_token or api_key."
            raise UsageError(msg)

    def header(self) -> tuple[str, str]:
        """The HTTP header that carries the credential: the one place its value is revealed."""
        if self.kind == "api_key":
            return ("x-api-key", self.secret.reveal())
        return ("authorization", "Bearer " + self.secret.reveal())

    @property
    def env_name(self) -> str:
        """The variable the Claude Code CLI reads a credential of this kind from."""
        return ENV_NAMES[self.kind]

    def hours_remaining(self, now: datetime | None = None) -> float | None:
        """Hours until it expires, negative once it has; ``None`` when the expiry is unknown."""
        if self.expires_at is None:
            return None
        return (self.expires_at - (now or datetime.now(UTC))).total_seconds() / 3600


def kind_of(token: str) -> Kind:
    """The kind of ``token`` by its prefix: ``sk-ant-oat...`` is an OAuth token, ``sk-ant-api...`` an API key."""
    if token.startswith("sk-ant-oat"):
        return "oauth_token"
    if token.startswith("sk-ant-api"):
        return "api_key"
    msg = (
        "The token is neither an OAuth token (sk-ant-oat...) nor an API key (sk-ant-api...) by its prefix; "
        "pass --kind oauth_token or --kind api_key to say which it is."
    )
    raise UsageError(msg)


def _choose_kind(token: str, kind: str | None) -> Kind:
    """The given ``kind`` (checked against the token's prefix, when it has a known one), else the detected one."""
    if kind is None:
        return kind_of(token)
    if kind not in KINDS:
        msg = f"The kind {kind!r} is unknown; use --kind oauth_token or --kind api_key."
        raise UsageError(msg)
    try:
        detected = kind_of(token)
    except UsageError:
        return kind
    if detected != kind:
        msg = f"The token is {_LABELS[detected]} by its prefix, but --kind {kind} was given; leave out --kind."
        raise UsageError(msg)
    return detected


def _clean(value: str, what: str, error: type[UsageError] = UsageError) -> str:
    """``value`` stripped; an empty or multi-line one is refused with a sentence naming ``what``, never the value."""
    token = value.strip()
    if not token:
        msg = f"{what} is empty; give the token itself."
        raise error(msg)
    if not token.isascii() or any(char.isspace() or not char.isprintable() for char in token):
        msg = f"{what} contains line breaks, spaces or other characters no token has; give one token, on one line."
        raise error(msg)
    return token


def _expiry(value: object, path: Path) -> datetime | None:
    """``expiresAt`` (epoch milliseconds) as an aware UTC time."""
    if value is None:
        return None
    when = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError, OSError, ValueError):
            when = datetime.fromtimestamp(value / 1000, tz=UTC)
    if when is None:
        msg = f"The expiresAt in {path} is not a time in epoch milliseconds; log in again with claude."
        raise CredentialsError(msg)
    return when


def read_claude_login(directory: Path) -> Credential:
    """The access token and expiry of the Claude Code login in ``directory``, read now; never copied or refreshed."""
    path = directory / LOGIN_FILE
    data: object = None
    problem = ""
    if not directory.is_dir():
        problem = (
            f"The directory {directory} does not exist; pass the Claude Code config directory that holds "
            f"{LOGIN_FILE} (~/.claude, or the CLAUDE_CONFIG_DIR claude was logged in with)."
        )
    else:
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            problem = (
                f"There is no Claude Code login in {directory}: {path} does not exist; log in there with "
                f"`CLAUDE_CONFIG_DIR={directory} claude` (then /login), or, on macOS where the login lives in the "
                "Keychain, use `claude setup-token` and `corral auth set-token`."
            )
        except OSError as err:
            problem = f"The Claude Code login file {path} cannot be read ({err.strerror}); run corral as its owner."
        except json.JSONDecodeError as err:
            problem = (
                f"The Claude Code login file {path} is not valid JSON ({err.msg}, line {err.lineno}); log in again."
            )
        except ValueError:
            problem = f"The Claude Code login file {path} is not UTF-8 JSON; log in again with claude."
    if problem:
        raise CredentialsError(problem)
    oauth = data.get("claudeAiOauth") if isinstance(data, dict) else None
    token = oauth.get("accessToken") if isinstance(oauth, dict) else None
    if not isinstance(oauth, dict) or not isinstance(token, str) or not token.strip():
        msg = (
            f"The Claude Code login file {path} has no claudeAiOauth.accessToken (logged out, or lost to a refresh "
            f"race); log in again with `CLAUDE_CONFIG_DIR={directory} claude`."
        )
        raise CredentialsError(msg)
    token = _clean(token, f"The accessToken in {path}", CredentialsError)
    return Credential(
        "oauth_token", Secret(token), f"claude login at {directory}", _expiry(oauth.get("expiresAt"), path)
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in a stored credential file; ``None`` when there is none."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        msg = f"The credential file {path} cannot be read ({err.strerror}); run corral as the user who stored it."
        raise CredentialsError(msg) from None
    data = None
    with contextlib.suppress(ValueError):
        data = json.loads(raw)
    if not isinstance(data, dict):
        msg = f"The credential file {path} is damaged; run `corral auth logout` and store the credential again."
        raise CredentialsError(msg)
    return data


def write_json_private(path: Path, data: Mapping[str, Any], *, owner: tuple[int, int] | None = None) -> None:
    """Write ``data`` as JSON to ``path`` atomically, readable by its owner only at every instant.

    The file is created 0600 under a temporary name in the same directory (``os.open`` with that
    mode, so it is never readable by others), given to ``owner`` (uid, gid) if one is named,
    synced, renamed over ``path``, and the directory is synced; on any failure the temporary file
    is removed, ``path`` is unchanged, and the error is raised.
    """
    directory = path.parent
    temp = directory / f".{path.name}.{os.urandom(6).hex()}.tmp"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fd, 0o600)
            if owner is not None:
                os.fchown(fd, *owner)
            fh.write((json.dumps(data) + "\n").encode())
            fh.flush()
            os.fsync(fd)
        temp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        raise
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_private(path: Path, data: Mapping[str, str]) -> None:
    """Write a stored credential file (``write_json_private``) in its directory, made 0700."""
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
        write_json_private(path, data)
    except OSError as err:
        msg = f"The credential file {path} cannot be written ({err.strerror}); make {directory} writable."
        raise CredentialsError(msg) from None


@dataclasses.dataclass(frozen=True)
class CredentialStore:
    """The credentials corral keeps under ``HOME/credentials/`` (directory 0700, files 0600, written atomically).

    ``claude.json`` holds either a token (``{"kind", "token"}``) or a reference to an adopted
    Claude Code login (``{"claude_dir"}``), never a copy of it: the claude CLI on the host refreshes
    that login, and its refresh token is single-use. ``git.json`` holds the bot token that pushes
    job branches.
    """

    home: Path

    @property
    def directory(self) -> Path:
        return self.home / "credentials"

    @property
    def claude_file(self) -> Path:
        return self.directory / "claude.json"

    @property
    def git_file(self) -> Path:
        return self.directory / "git.json"

    def set_token(self, value: str, kind: str | None = None) -> Credential:
        """Store a Claude token (from ``claude setup-token``, or an API key), replacing any credential stored before."""
        token = _clean(value, "The token")
        chosen = _choose_kind(token, kind)
        _write_private(self.claude_file, {"kind": chosen, "token": token})
        return Credential(chosen, Secret(token), "stored token")

    def import_claude_dir(self, directory: Path) -> Credential:
        """Adopt the Claude Code login in ``directory`` by reference; ``load()`` rereads it every time."""
        where = directory.expanduser().resolve()
        credential = read_claude_login(where)
        _write_private(self.claude_file, {"claude_dir": str(where)})
        return credential

    def adopted_dir(self) -> Path | None:
        """The directory of the adopted Claude Code login, if one is adopted (it must stay out of every sandbox)."""
        data = _read_json(self.claude_file)
        where = None if data is None else data.get("claude_dir")
        return Path(where) if isinstance(where, str) else None

    def load(self) -> Credential | None:
        """The stored token or the adopted login as it is on disk now; ``None`` when neither is configured."""
        data = _read_json(self.claude_file)
        if data is None:
            return None
        where, kind, token = data.get("claude_dir"), data.get("kind"), data.get("token")
        if isinstance(where, str) and where:
            return read_claude_login(Path(where))
        if kind not in KINDS or not isinstance(token, str) or not token:
            msg = f"The credential file {self.claude_file} is damaged; run `corral auth logout` and store it again."
            raise CredentialsError(msg)
        return Credential(cast(Kind, kind), Secret(token), "stored token")

    def set_git_token(self, value: str) -> None:
        """Store the bot token that pushes job branches, replacing the one stored before."""
        _write_private(self.git_file, {"token": _clean(value, "The git token")})

    def git_token(self, environ: Mapping[str, str] = os.environ) -> Secret | None:
        """The stored git token, else ``CORRAL_GIT_TOKEN`` from ``environ``, else ``None``."""
        found = self._git_token(environ)
        return None if found is None else found[0]

    def _git_token(self, environ: Mapping[str, str]) -> tuple[Secret, str] | None:
        data = _read_json(self.git_file)
        if data is not None:
            token = data.get("token")
            if not isinstance(token, str) or not token:
                msg = f"The credential file {self.git_file} is damaged; run `corral auth set-git-token` again."
                raise CredentialsError(msg)
            return Secret(token), "stored"
        value = environ.get(GIT_TOKEN_ENV, "")
        if not value.strip():
            return None
        return Secret(_clean(value, f"The environment variable {GIT_TOKEN_ENV}", CredentialsError)), GIT_TOKEN_ENV

    def clear(self) -> None:
        """Forget the stored token or adopted login (the login itself is left alone) and the git token."""
        try:
            for path in (self.claude_file, self.git_file, *self.directory.glob(".*.tmp")):
                path.unlink(missing_ok=True)
        except OSError as err:
            msg = f"The credentials in {self.directory} cannot be removed ({err.strerror}); run corral as their owner."
            raise CredentialsError(msg) from None

    def status(self, environ: Mapping[str, str] = os.environ, now: datetime | None = None) -> dict[str, Any]:
        """What ``corral auth status`` shows, never a value.

        ``configured`` is true when jobs can run: a credential is found and has not expired;
        otherwise ``error`` is the sentence that says why and how to fix it.
        """
        git = self._git_token(environ)
        report: dict[str, Any] = {
            "configured": False,
            "kind": None,
            "source": None,
            "expires_at": None,
            "hours_remaining": None,
            "git_token": git is not None,
            "git_token_source": None if git is None else git[1],
            "error": None,
        }
        try:
            credential = _find(self, environ)
            if credential is None:
                raise CredentialsError(NO_CREDENTIAL)
            report.update(kind=credential.kind, source=credential.source)
            if credential.expires_at is not None:
                hours = credential.hours_remaining(now)
                report.update(expires_at=credential.expires_at.isoformat(timespec="seconds"), hours_remaining=hours)
            _check_fresh(credential, now)
        except CredentialsError as err:
            report["error"] = str(err)
        else:
            report["configured"] = True
        if report["hours_remaining"] is not None:
            report["hours_remaining"] = round(report["hours_remaining"], 2)
        return report


def _from_environment(environ: Mapping[str, str]) -> Credential | None:
    """``ANTHROPIC_API_KEY``, else ``CLAUDE_CODE_OAUTH_TOKEN``: the order the Claude Code CLI uses in ``-p``."""
    for kind in ("api_key", "oauth_token"):
        name = ENV_NAMES[kind]
        value = environ.get(name, "")
        if value.strip():
            token = _clean(value, f"The environment variable {name}", CredentialsError)
            return Credential(kind, Secret(token), f"environment {name}")
    return None


def _find(store: CredentialStore, environ: Mapping[str, str]) -> Credential | None:
    stored = store.load()
    return stored if stored is not None else _from_environment(environ)


def _check_fresh(credential: Credential, now: datetime | None) -> None:
    if credential.expires_at is not None and credential.expires_at <= (now or datetime.now(UTC)):
        msg = (
            f"The Claude credential from {credential.source} expired at "
            f"{credential.expires_at.isoformat(timespec='seconds')}; run `claude` once with CLAUDE_CONFIG_DIR set to "
            "that directory so it refreshes its login, or store a long-lived token with `claude setup-token` and "
            "`corral auth set-token`."
        )
        raise CredentialsError(msg)


def resolve_credential(home: Path, environ: Mapping[str, str] = os.environ, now: datetime | None = None) -> Credential:
    """The Claude credential of jobs: stored or adopted, else ``ANTHROPIC_API_KEY``, else ``CLAUDE_CODE_OAUTH_TOKEN``.

    Raises ``CredentialsError`` when there is none, when a stored file cannot be read, and when an
    adopted login has expired (never falling back to the environment then: the stored choice wins).
    """
    credential = _find(CredentialStore(home), environ)
    if credential is None:
        raise CredentialsError(NO_CREDENTIAL)
    _check_fresh(credential, now)
    return credential
