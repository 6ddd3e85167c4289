"""Where the Claude credential comes from, how it is stored, and that its value never shows."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import stat
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from secrets import token_hex, token_urlsafe

import pytest

from corral.errors import CredentialsError, UsageError
from corral.secrets import Credential, CredentialStore, Secret, kind_of, read_claude_login, resolve_credential

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
NO_CREDENTIAL = (
    "No Claude credential is configured; run `corral auth set-token` (from `claude setup-token`) "
    "or set ANTHROPIC_API_KEY."
)


def oauth_token() -> str:
    return "sk-ant-oat01-" + token_urlsafe(32)


def api_key() -> str:
    return "sk-ant-api03-" + token_urlsafe(32)


def write_login(directory: Path, token: str, expires: datetime | None, refresh: str = "") -> Path:
    """A Claude Code login as the claude CLI writes it: ``DIR/.credentials.json``, expiry in epoch ms."""
    directory.mkdir(parents=True, exist_ok=True)
    oauth: dict[str, object] = {
        "accessToken": token,
        "refreshToken": refresh or "sk-ant-ort01-" + token_urlsafe(32),
        "scopes": ["user:inference", "user:profile", "user:sessions:claude_code"],
        "subscriptionType": "max",
    }
    if expires is not None:
        oauth["expiresAt"] = round(expires.timestamp() * 1000)
    path = directory / ".credentials.json"
    path.write_text(json.dumps({"claudeAiOauth": oauth}))
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "corral-home"


@pytest.fixture
def store(home: Path) -> CredentialStore:
    return CredentialStore(home)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- kinds and headers -------------------------------------------------------------------------


@pytest.mark.parametrize(("make", "kind"), [(oauth_token, "oauth_token"), (api_key, "api_key")])
def test_kind_is_read_from_the_prefix(make: Callable[[], str], kind: str) -> None:
    assert kind_of(make()) == kind


@pytest.mark.parametrize("token", ["sk-ant-ort01-refresh", "ghp_abcdef", "sk-proj-123", "Bearer sk-ant-oat01-x"])
def test_an_unknown_prefix_asks_for_kind_without_showing_the_token(token: str) -> None:
    with pytest.raises(UsageError, match="pass --kind oauth_token or --kind api_key") as err:
        kind_of(token)
    assert token not in str(err.value)


def test_the_header_and_variable_follow_the_kind() -> None:
    value = token_hex(16)
    key = Credential("api_key", Secret(value), "test")
    token = Credential("oauth_token", Secret(value), "test")
    assert (key.header(), key.env_name) == (("x-api-key", value), "ANTHROPIC_API_KEY")
    assert (token.header(), token.env_name) == (("authorization", f"Bearer {value}"), "CLAUDE_CODE_OAUTH_TOKEN")


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(UsageError, match="'password' is unknown"):
        Credential("password", Secret("x"), "test")  # type: ignore[arg-type]


# --- set_token ---------------------------------------------------------------------------------


def test_set_token_strips_and_detects_the_kind(store: CredentialStore) -> None:
    token = oauth_token()
    credential = store.set_token(f"  {token}\n")
    assert (credential.kind, credential.source, credential.secret.reveal()) == ("oauth_token", "stored token", token)
    assert store.load() == credential


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("", "is empty"),
        (" \n\t", "is empty"),
        ("sk-ant-oat01-abc\nsk-ant-oat01-def", "line breaks"),
        ("sk-ant-oat01-abc def", "spaces"),
        ("sk-ant-oat01-abc\x00", "on one line"),
        ("sk-ant-oat01-abcé", "on one line"),
    ],
)
def test_set_token_refuses_what_is_not_one_token(store: CredentialStore, value: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        store.set_token(value)
    assert not store.claude_file.exists()


def test_an_explicit_kind_is_kept_and_checked(store: CredentialStore) -> None:
    assert store.set_token("gateway-token-123", kind="api_key").kind == "api_key"
    with pytest.raises(UsageError, match=r"is an OAuth token \(sk-ant-oat...\) by its prefix, but --kind api_key"):
        store.set_token(oauth_token(), kind="api_key")
    with pytest.raises(UsageError, match="'bearer' is unknown"):
        store.set_token(oauth_token(), kind="bearer")
    assert store.load() == Credential("api_key", Secret("gateway-token-123"), "stored token")


# --- precedence --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "env", "expected"),
    [
        ("token", {"ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"}, "stored token"),
        ("login", {"ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"}, "claude login at"),
        (None, {"ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"}, "environment ANTHROPIC_API_KEY"),
        (None, {"ANTHROPIC_API_KEY"}, "environment ANTHROPIC_API_KEY"),
        (None, {"CLAUDE_CODE_OAUTH_TOKEN"}, "environment CLAUDE_CODE_OAUTH_TOKEN"),
        (None, set(), None),
    ],
)
def test_precedence(home: Path, tmp_path: Path, stored: str | None, env: set[str], expected: str | None) -> None:
    values = {"token": oauth_token(), "login": oauth_token()}
    environ = {name: api_key() if name == "ANTHROPIC_API_KEY" else oauth_token() for name in env}
    if stored == "token":
        CredentialStore(home).set_token(values["token"])
    elif stored == "login":
        write_login(tmp_path / "claude", values["login"], datetime.now(UTC) + timedelta(hours=5))
        CredentialStore(home).import_claude_dir(tmp_path / "claude")
    if expected is None:
        with pytest.raises(CredentialsError) as err:
            resolve_credential(home, environ)
        assert str(err.value) == NO_CREDENTIAL
        return
    credential = resolve_credential(home, environ)
    assert credential.source.startswith(expected)
    value = values[stored] if stored else environ[expected.removeprefix("environment ")]
    assert credential.secret.reveal() == value
    assert credential.kind == ("api_key" if expected.endswith("API_KEY") else "oauth_token")


def test_empty_environment_values_count_as_unset(home: Path) -> None:
    token = oauth_token()
    credential = resolve_credential(home, {"ANTHROPIC_API_KEY": " ", "CLAUDE_CODE_OAUTH_TOKEN": f"{token}\n"})
    assert (credential.source, credential.secret.reveal()) == ("environment CLAUDE_CODE_OAUTH_TOKEN", token)


def test_a_multi_line_environment_value_is_refused_by_name(home: Path) -> None:
    with pytest.raises(CredentialsError, match="The environment variable ANTHROPIC_API_KEY contains line breaks"):
        resolve_credential(home, {"ANTHROPIC_API_KEY": "sk-ant-api03-a\nX-Injected: 1"})


# --- files: modes and atomic writes --------------------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Umask 0, so only explicit modes keep the files private."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("open_umask")
def test_files_are_0600_in_a_0700_directory(store: CredentialStore) -> None:
    store.set_token(oauth_token())
    store.set_git_token(token_hex(20))
    assert mode(store.directory) == 0o700
    assert (mode(store.claude_file), mode(store.git_file)) == (0o600, 0o600)
    assert sorted(p.name for p in store.directory.iterdir()) == ["claude.json", "git.json"]


@pytest.mark.usefixtures("open_umask")
def test_a_loose_directory_is_tightened(store: CredentialStore) -> None:
    store.directory.mkdir(parents=True, mode=0o755)
    store.directory.chmod(0o755)
    store.set_token(oauth_token())
    assert mode(store.directory) == 0o700


@pytest.mark.usefixtures("open_umask")
def test_the_file_is_private_from_its_first_instant(store: CredentialStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The temporary file is 0600 the moment it is created, and still when it is renamed into place."""
    seen: list[tuple[str, int]] = []
    real_open, real_replace = os.open, Path.replace

    def spy_open(path: str | os.PathLike[str], flags: int, *args: int, **kwargs: int) -> int:
        fd = real_open(path, flags, *args, **kwargs)
        if str(path).endswith(".tmp"):
            seen.append(("created", stat.S_IMODE(os.fstat(fd).st_mode)))
        return fd

    def spy_replace(self: Path, target: str | os.PathLike[str]) -> Path:
        seen.append(("renamed", mode(self)))
        return real_replace(self, target)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(Path, "replace", spy_replace)
    store.set_token(oauth_token())
    assert seen == [("created", 0o600), ("renamed", 0o600)]


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_a_failed_write_leaves_the_old_file_and_no_temp_file(
    store: CredentialStore, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    old = store.set_token(oauth_token())

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(*((Path, "replace", fail) if failing == "replace" else (os, "fsync", fail)))
    with pytest.raises(CredentialsError, match=r"claude\.json cannot be written \(No space left on device\)"):
        store.set_token(oauth_token())
    monkeypatch.undo()
    assert [p.name for p in store.directory.iterdir()] == ["claude.json"]
    assert store.load() == old


def test_a_damaged_file_is_named(store: CredentialStore) -> None:
    store.set_token(oauth_token())
    store.claude_file.write_text('{"kind": "oauth_token", "tok')
    with pytest.raises(CredentialsError, match=rf"{store.claude_file} is damaged; run `corral auth logout`"):
        store.load()


# --- the value never shows -----------------------------------------------------------------------


def renderings(thing: object) -> list[str]:
    return [
        repr(thing),
        str(thing),
        f"{thing}",
        f"{thing!r}",
        format(thing),
        json.dumps(thing, default=str),
    ]


def test_credential_and_secret_never_show_the_value(caplog: pytest.LogCaptureFixture) -> None:
    token = oauth_token()
    credential = Credential("oauth_token", Secret(token), "stored token", NOW)
    logger = logging.getLogger("corral.test")
    with caplog.at_level(logging.DEBUG):
        logger.info("credential %s %r", credential, credential)
        logger.info("secret %s %r", credential.secret, credential.secret)
        logger.info("dict %s", {"credential": credential})
    texts = [*renderings(credential), *renderings(credential.secret), caplog.text]
    assert "stored token" in texts[0]
    assert "credential Credential(" in caplog.text
    for text in texts:
        assert token not in text
        assert token[-20:] not in text
    for thing in (credential, credential.secret):
        with pytest.raises(TypeError, match="cannot be pickled") as err:
            pickle.dumps(thing)
        assert token not in str(err.value)


def test_status_never_holds_a_value(store: CredentialStore) -> None:
    token, git = oauth_token(), token_hex(20)
    store.set_token(token)
    store.set_git_token(git)
    report = store.status({})
    assert report == {
        "configured": True,
        "kind": "oauth_token",
        "source": "stored token",
        "expires_at": None,
        "hours_remaining": None,
        "git_token": True,
        "git_token_source": "stored",
        "error": None,
    }
    assert token not in json.dumps(report)
    assert git not in json.dumps(report)


# --- adopted Claude Code logins ------------------------------------------------------------------


def test_expiry_comes_from_expires_at_milliseconds(tmp_path: Path) -> None:
    expires = NOW + timedelta(hours=3, minutes=30)
    write_login(tmp_path / "claude", oauth_token(), expires)
    credential = read_claude_login(tmp_path / "claude")
    assert credential.expires_at == expires
    assert credential.hours_remaining(NOW) == pytest.approx(3.5)
    assert credential.hours_remaining(NOW + timedelta(hours=4)) == pytest.approx(-0.5)
    assert Credential("api_key", Secret("x"), "environment").hours_remaining(NOW) is None


def test_an_adopted_login_is_stored_by_reference_and_reread(store: CredentialStore, tmp_path: Path) -> None:
    """The claude CLI refreshes its file on the host; the next load sees the new token and expiry."""
    first, refresh = oauth_token(), "sk-ant-ort01-" + token_urlsafe(32)
    write_login(tmp_path / "claude", first, NOW + timedelta(hours=1), refresh)
    adopted = store.import_claude_dir(tmp_path / "claude")
    assert (adopted.secret.reveal(), adopted.source) == (first, f"claude login at {tmp_path / 'claude'}")
    stored = store.claude_file.read_text()
    assert first not in stored
    assert refresh not in stored
    assert store.adopted_dir() == tmp_path / "claude"

    second = oauth_token()
    write_login(tmp_path / "claude", second, NOW + timedelta(hours=9))
    reloaded = store.load()
    assert reloaded is not None
    assert (reloaded.secret.reveal(), reloaded.expires_at) == (second, NOW + timedelta(hours=9))


def test_import_follows_a_relative_directory(
    store: CredentialStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_login(tmp_path / "claude", oauth_token(), None)
    monkeypatch.chdir(tmp_path)
    store.import_claude_dir(Path("claude"))
    monkeypatch.chdir("/")
    credential = store.load()
    assert credential is not None
    assert credential.source == f"claude login at {tmp_path.resolve() / 'claude'}"


def test_an_expired_login_is_an_error_naming_the_time(home: Path, tmp_path: Path) -> None:
    expired = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    write_login(tmp_path / "claude", oauth_token(), expired)
    CredentialStore(home).import_claude_dir(tmp_path / "claude")
    with pytest.raises(
        CredentialsError, match=re.escape(f"expired at {expired.isoformat()}; run `claude` once")
    ) as err:
        resolve_credential(home, {"ANTHROPIC_API_KEY": api_key()})  # no silent fallback to the environment
    assert "corral auth set-token" in str(err.value)
    report = CredentialStore(home).status({})
    assert (report["configured"], report["error"]) == (False, str(err.value))
    assert report["hours_remaining"] == pytest.approx(-2, abs=0.01)


def broken_login(directory: Path, how: str) -> None:
    if how == "no directory":
        return
    directory.mkdir()
    content = {
        "no file": None,
        "bad json": '{"claudeAiOauth": {"accessToken": "sk-ant-oat01-secret-tail"',
        "no access token": '{"claudeAiOauth": {"refreshToken": "sk-ant-ort01-x"}}',
        "empty access token": '{"claudeAiOauth": {"accessToken": "", "refreshToken": ""}}',
        "not an object": '["sk-ant-oat01-secret-tail"]',
        "bad expiry": '{"claudeAiOauth": {"accessToken": "sk-ant-oat01-secret-tail", "expiresAt": "soon"}}',
    }[how]
    if content is not None:
        (directory / ".credentials.json").write_text(content)


@pytest.mark.parametrize(
    ("how", "match"),
    [
        ("no directory", "does not exist; pass the Claude Code config directory"),
        ("no file", r"There is no Claude Code login in .*claude: .*\.credentials\.json does not exist"),
        ("bad json", r"\.credentials\.json is not valid JSON \(.*line 1\); log in again"),
        ("no access token", r"has no claudeAiOauth\.accessToken"),
        ("empty access token", "lost to a refresh race"),
        ("not an object", r"has no claudeAiOauth\.accessToken"),
        ("bad expiry", "expiresAt in .* is not a time in epoch milliseconds"),
    ],
)
def test_an_unusable_login_is_refused_clearly(store: CredentialStore, tmp_path: Path, how: str, match: str) -> None:
    broken_login(tmp_path / "claude", how)
    with pytest.raises(CredentialsError, match=match) as err:
        store.import_claude_dir(tmp_path / "claude")
    assert "secret-tail" not in str(err.value)
    assert not store.claude_file.exists()


def test_a_login_that_disappears_later_is_an_error(store: CredentialStore, tmp_path: Path) -> None:
    write_login(tmp_path / "claude", oauth_token(), None)
    store.import_claude_dir(tmp_path / "claude")
    (tmp_path / "claude" / ".credentials.json").unlink()
    with pytest.raises(CredentialsError, match="There is no Claude Code login in"):
        store.load()
    assert store.status({"ANTHROPIC_API_KEY": api_key()})["error"].startswith("There is no Claude Code login in")


# --- git token, clear ----------------------------------------------------------------------------


def test_git_token_stored_over_environment(store: CredentialStore) -> None:
    from_env, stored = token_hex(20), token_hex(20)
    assert store.git_token({}) is None
    assert store.git_token({"CORRAL_GIT_TOKEN": from_env}) == Secret(from_env)
    assert store.status({"CORRAL_GIT_TOKEN": from_env})["git_token_source"] == "CORRAL_GIT_TOKEN"
    store.set_git_token(f"{stored}\n")
    assert store.git_token({"CORRAL_GIT_TOKEN": from_env}) == Secret(stored)
    with pytest.raises(UsageError, match="The git token is empty"):
        store.set_git_token("\n")


def test_clear_forgets_everything_but_leaves_an_adopted_login(store: CredentialStore, tmp_path: Path) -> None:
    login = write_login(tmp_path / "claude", oauth_token(), None)
    before = login.read_bytes()
    store.import_claude_dir(tmp_path / "claude")
    store.set_git_token(token_hex(20))
    (store.directory / ".claude.json.0123.tmp").write_text("left by a crash")
    store.clear()
    assert list(store.directory.iterdir()) == []
    assert (store.load(), store.git_token({}), store.adopted_dir()) == (None, None, None)
    assert login.read_bytes() == before
    assert store.status({})["error"] == NO_CREDENTIAL
