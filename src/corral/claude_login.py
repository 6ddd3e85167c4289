"""The claude.ai login of a ``--remote-control`` session: copied in, checked field by field, carried back.

``ClaudeLogin`` is the ``claudeAiOauth`` entry of a Claude Code login (``.credentials.json``).
A remote-control session runs on the login adopted with ``corral auth import-claude-dir``:
``session_login`` reads and checks it, ``write_session_login`` puts only that entry in the
session's config dir, and when the session ends ``carry_back`` brings a login the CLI refreshed
inside back to the adopted one, after reading the session's file as a hostile one would write
it (see ``docs/sessions.md``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import re
import stat
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from corral.errors import CredentialsError
from corral.secrets import LOGIN_FILE, CredentialStore, Secret, write_json_private

__all__ = [
    "NO_LOGIN",
    "CarryOutcome",
    "ClaudeLogin",
    "carry_back",
    "carry_decision",
    "read_session_login",
    "session_login",
    "write_session_login",
]

NO_LOGIN = (
    "--remote-control needs a claude.ai login adopted by corral, and none is (a stored token or an API key cannot "
    "run Remote Control); log in with `claude` (then /login) and run `corral auth import-claude-dir ~/.claude`, "
    "or start without --remote-control."
)

LOGIN_FILE_LIMIT = 64 * 1024
"""Bytes of a credentials file read at most (a real one is under 1 KiB)."""
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")
_TOKEN_PREFIXES: Mapping[str, str] = {"accessToken": "sk-ant-oat", "refreshToken": "sk-ant-ort"}
_LATEST_MS = 10**14
"""Epoch milliseconds past any real expiry (the year 5138)."""

CarryOutcome = Literal["unchanged", "missing", "conflict", "older", "carried"]


class _InvalidLogin(CredentialsError):
    """Why a credentials file is not a claude.ai login: a clause naming the field, never a value."""


@dataclasses.dataclass(frozen=True)
class ClaudeLogin:
    """The ``claudeAiOauth`` entry of a Claude Code login, field by field; the tokens stay in ``Secret``."""

    access_token: Secret
    refresh_token: Secret
    expires_at: int
    """Epoch milliseconds."""
    scopes: tuple[str, ...] | None = None
    subscription_type: str | None = None
    rate_limit_tier: str | None = None
    client_id: str | None = None

    @classmethod
    def parse(cls, data: object) -> ClaudeLogin:
        """The entry in a credentials file's JSON ``data``, checked strictly; any other field is dropped.

        Raises ``_InvalidLogin`` naming the first field that is missing or not of its form.
        """
        oauth = data.get("claudeAiOauth") if isinstance(data, dict) else None
        if not isinstance(oauth, dict):
            msg = "it has no claudeAiOauth object"
            raise _InvalidLogin(msg)
        expires = oauth.get("expiresAt")
        if isinstance(expires, float) and expires.is_integer():
            expires = int(expires)
        if not isinstance(expires, int) or isinstance(expires, bool) or not 0 < expires < _LATEST_MS:
            msg = "its expiresAt is not a time in epoch milliseconds"
            raise _InvalidLogin(msg)
        scopes = oauth.get("scopes")
        if scopes is not None and not (
            isinstance(scopes, list)
            and len(scopes) <= 32
            and all(isinstance(s, str) and _WORD.fullmatch(s) for s in scopes)
        ):
            msg = "its scopes are not a short list of scope names"
            raise _InvalidLogin(msg)
        return cls(
            access_token=Secret(_login_token(oauth, "accessToken")),
            refresh_token=Secret(_login_token(oauth, "refreshToken")),
            expires_at=expires,
            scopes=None if scopes is None else tuple(scopes),
            subscription_type=_login_word(oauth, "subscriptionType"),
            rate_limit_tier=_login_word(oauth, "rateLimitTier"),
            client_id=_login_word(oauth, "clientId"),
        )

    def to_json(self) -> dict[str, Any]:
        """The entry as the claude CLI writes it; reveals the tokens, so only for writing the file."""
        entry: dict[str, Any] = {
            "accessToken": self.access_token.reveal(),
            "refreshToken": self.refresh_token.reveal(),
            "expiresAt": self.expires_at,
        }
        if self.scopes is not None:
            entry["scopes"] = list(self.scopes)
        entry.update(subscriptionType=self.subscription_type, rateLimitTier=self.rate_limit_tier)
        if self.client_id is not None:
            entry["clientId"] = self.client_id
        return entry

    def expires(self) -> str:
        return datetime.fromtimestamp(self.expires_at / 1000, tz=UTC).isoformat(timespec="seconds")


def _login_token(oauth: Mapping[str, object], key: str) -> str:
    value, prefix = oauth.get(key), _TOKEN_PREFIXES[key]
    if not (
        isinstance(value, str)
        and value.startswith(prefix)
        and 16 <= len(value) <= 4096
        and value.isascii()
        and all(char.isprintable() and not char.isspace() for char in value)
    ):
        msg = f"its {key} is missing or is not a token ({prefix}...)"
        raise _InvalidLogin(msg)
    return value


def _login_word(oauth: Mapping[str, object], key: str) -> str | None:
    value = oauth.get(key)
    if value is None or (isinstance(value, str) and _WORD.fullmatch(value)):
        return value
    msg = f"its {key} is not a short name"
    raise _InvalidLogin(msg)


def _read_login_bytes(directory: Path, *, follow: bool) -> bytes | None:
    """The bytes of ``directory/.credentials.json``; ``None`` when there is none.

    With ``follow=False`` (a directory a sandbox could write) neither the directory nor the file
    may be a symbolic link, and the file must be a regular file with no other hard link.
    """
    nofollow = 0 if follow else os.O_NOFOLLOW
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | nofollow)
    except FileNotFoundError:
        return None
    except OSError as err:
        why = "a symbolic link" if err.errno in (errno.ELOOP, errno.ENOTDIR) else f"unreadable ({err.strerror})"
        msg = f"its directory is {why}"
        raise _InvalidLogin(msg) from None
    try:
        fd = os.open(LOGIN_FILE, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | nofollow, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as err:
        why = "a symbolic link" if err.errno == errno.ELOOP else f"unreadable ({err.strerror})"
        msg = f"the file is {why}"
        raise _InvalidLogin(msg) from None
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode) or (not follow and info.st_nlink != 1):
            msg = "the file is not a plain regular file"
            raise _InvalidLogin(msg)
        raw = fh.read(LOGIN_FILE_LIMIT + 1)
    if len(raw) > LOGIN_FILE_LIMIT:
        msg = f"the file is larger than {LOGIN_FILE_LIMIT // 1024} KiB"
        raise _InvalidLogin(msg)
    return raw


def _login_json(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        msg = "it is not JSON"
        raise _InvalidLogin(msg) from None
    if not isinstance(data, dict):
        msg = "it is not a JSON object"
        raise _InvalidLogin(msg)
    return data


def read_session_login(directory: Path) -> ClaudeLogin:
    """The checked ``claudeAiOauth`` entry of the login in ``directory``, for a remote-control session."""
    path = directory / LOGIN_FILE
    fix = f"log in again with `CLAUDE_CONFIG_DIR={directory} claude` (then /login)"
    try:
        raw = _read_login_bytes(directory, follow=True)
        if raw is None:
            msg = f"There is no Claude Code login in {directory}: {path} does not exist; {fix}."
            raise CredentialsError(msg)
        return ClaudeLogin.parse(_login_json(raw))
    except _InvalidLogin as err:
        msg = f"The Claude Code login {path} cannot run Remote Control: {err}; {fix}."
        raise CredentialsError(msg) from None


def write_session_login(config_dir: Path, login: ClaudeLogin) -> Path:
    """Put ``login`` in a new ``config_dir/.credentials.json``, mode 0600: only its ``claudeAiOauth`` entry."""
    path = config_dir / LOGIN_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(json.dumps({"claudeAiOauth": login.to_json()}).encode() + b"\n")
    return path


def session_login(adopted: Path | None) -> ClaudeLogin:
    """The checked entry of the login adopted in ``adopted`` that a ``--remote-control`` session takes
    in; with none adopted (``None``), the refusal that says how to adopt one."""
    if adopted is None:
        raise CredentialsError(NO_LOGIN)
    return read_session_login(adopted)


def carry_back(store: CredentialStore, adopted: Path, inside: Path, sent: ClaudeLogin) -> str:
    """Bring the login a session refreshed (in its config dir ``inside``) back to ``adopted``; what happened.

    Under a lock in the store's directory, so two sessions ending at once compare and write in turn.
    Never raises: every outcome is a sentence ("" when the session did not change the login).
    """
    lock = store.directory / "claude-login.lock"
    try:
        store.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as err:
        return f"The lock {lock} cannot be taken ({err.strerror}); kept {adopted / LOGIN_FILE} as it was."
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return _carry_back(adopted, inside, sent)
    finally:
        os.close(fd)


def carry_decision(sent: ClaudeLogin, inside: ClaudeLogin | None, host: ClaudeLogin | None) -> CarryOutcome:
    """Whether the (valid) login a session left replaces the adopted one.

    ``sent`` is what the session was given, ``inside`` what it left (``None``: no file), ``host``
    the adopted login now (``None``: gone or damaged). Only a change made while the host's file
    stayed as it was given is carried, and never one that expires earlier than what was sent.
    """
    if inside is None:
        return "missing"
    if inside == sent:
        return "unchanged"
    if host != sent:
        return "conflict"
    if inside.expires_at < sent.expires_at:
        return "older"
    return "carried"


def _carry_back(adopted: Path, inside: Path, sent: ClaudeLogin) -> str:
    path = adopted / LOGIN_FILE
    relogin = f"if the session had refreshed it, log in again with `CLAUDE_CONFIG_DIR={adopted} claude`"
    try:
        raw = _read_login_bytes(inside, follow=False)
        left = None if raw is None else ClaudeLogin.parse(_login_json(raw))
    except _InvalidLogin as err:
        return f"The login the session left is not a valid claude.ai login ({err}); kept {path} as it was ({relogin})."
    data: dict[str, Any] = {}
    host = None
    with contextlib.suppress(_InvalidLogin):
        raw = _read_login_bytes(adopted, follow=True)
        data = _login_json(raw) if raw is not None else {}
        host = ClaudeLogin.parse(data)
    outcome = carry_decision(sent, left, host)
    if outcome == "unchanged":
        return ""
    if outcome == "missing":
        return f"The session left no claude.ai login file; kept {path} as it was ({relogin})."
    if outcome == "conflict":
        return f"{path} changed on the host during the session; kept it and dropped the login the session left."
    if outcome == "older" or left is None:
        return f"The login the session left expires before the one it was given; kept {path} as it was."
    if path.is_symlink():
        return f"{path} is a symbolic link, which corral does not replace; kept it as it was ({relogin})."
    try:
        info = path.stat()
        owner = (info.st_uid, info.st_gid) if os.geteuid() == 0 else None
        write_json_private(path, {**data, "claudeAiOauth": left.to_json()}, owner=owner)
    except OSError as err:
        return f"The refreshed login could not be written to {path} ({err.strerror}); kept it as it was ({relogin})."
    return f"The session refreshed your claude.ai login; carried it back to {path} (valid until {left.expires()})."
