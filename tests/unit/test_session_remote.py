"""``corral start --remote-control`` as data: the allow list, environment, argv and plan; the login's checks.

The login files here are made up (``sk-ant-oat01-`` plus random text), never a real credential.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path
from secrets import token_urlsafe
from typing import Any

import pytest

from corral.agents.base import AgentRequest
from corral.agents.claude_code import OFFLINE_ENV, build_env, managed_settings
from corral.claude_login import (
    NO_LOGIN,
    ClaudeLogin,
    carry_back,
    carry_decision,
    read_session_login,
    session_login,
    write_session_login,
)
from corral.cli.start import format_plan
from corral.egress.policy import Policy
from corral.errors import CredentialsError, UsageError
from corral.manifest import load_manifest
from corral.remote_control import (
    REMOTE_API_URL,
    REMOTE_CONTROL_HOSTS,
    REMOTE_CONTROL_OFF,
    remote_env,
    remote_managed_settings,
)
from corral.secrets import CredentialStore
from corral.session import Plan, check_startable, egress_allow, interactive_argv, make_plan, sandbox_for
from corral.settings import Settings

MANIFEST = """\
[agents.coder]
bottle = "dev"
ssh = [{ name = "gh", host = "github.com", user = "git" }]

[agents.leaky]
bottle = "dev"
env = ["DO_NOT_TRACK", "ANTHROPIC_API_KEY"]

[bottles.dev]
allow = ["pypi.org"]
deny = ["platform.claude.com"]
"""
HOUR_MS = 3600 * 1000
EXPIRES = 1_900_000_000_000
CREDENTIAL_NAMES = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")


def oauth_entry(expires: int = EXPIRES, **changes: object) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "accessToken": "sk-ant-oat01-" + token_urlsafe(24),
        "refreshToken": "sk-ant-ort01-" + token_urlsafe(24),
        "expiresAt": expires,
        "scopes": ["user:inference", "user:profile", "user:sessions:claude_code"],
        "subscriptionType": "max",
        "rateLimitTier": "default_claude_max_20x",
    }
    entry.update(changes)
    return entry


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "corral.toml").write_text(MANIFEST)
    return tmp_path / "project"


def plan_of(project: Path, home: Path, agent: str = "coder", *, remote: bool = True) -> Plan:
    loaded = load_manifest(project / "corral.toml")
    return make_plan(loaded, agent, home=home, permission_mode="bypassPermissions", remote_control=remote)


def adopt(home: Path, directory: Path, **changes: object) -> dict[str, Any]:
    """A made-up login in ``directory``, adopted by the store in ``home``; the file's JSON."""
    data = {"claudeAiOauth": oauth_entry(**changes), "mcpOAuth": {"srv": {"accessToken": "mcp-" + token_urlsafe(8)}}}
    write_json(directory / ".credentials.json", data)
    CredentialStore(home).import_claude_dir(directory)
    return data


def request(tmp_path: Path) -> AgentRequest:
    return AgentRequest(
        prompt="(interactive session)",
        cwd=tmp_path / "work",
        config_dir=tmp_path / "agent",
        tmp_dir=tmp_path / "tmp",
        base_url="http://127.0.0.1:9/gateway",
        credential_env={"ANTHROPIC_API_KEY": "placeholder"},
        env={"DO_NOT_TRACK": "1", "DISABLE_GROWTHBOOK": "1", "KEEP_ME": "yes"},
    )


# --- the builders ---


def test_remote_allow_list_is_the_bottles_plus_anthropic_and_deny_still_wins(project: Path, tmp_path: Path) -> None:
    plan = plan_of(project, tmp_path / "home")
    allow = egress_allow(plan, "127.0.0.1:4000")
    assert allow == (*plan.allow, *REMOTE_CONTROL_HOSTS, *(h.target for h in plan.ssh))
    assert "127.0.0.1:4000" not in allow  # no gateway in remote control
    policy = Policy(allow=allow, deny=plan.deny)
    for target in REMOTE_CONTROL_HOSTS:
        host, port = target.rsplit(":", 1)
        assert policy.decide(host, int(port)).allowed is (host not in plan.deny)
    assert not policy.decide("platform.claude.com", 443).allowed  # the bottle's deny rule wins
    assert not policy.decide("api.anthropic.com", 80).allowed  # only the port named
    assert not policy.decide("claude.ai", 443).allowed


def test_plain_session_allow_list_has_the_gateway_and_no_anthropic_host(project: Path, tmp_path: Path) -> None:
    plan = plan_of(project, tmp_path / "home", remote=False)
    allow = egress_allow(plan, "127.0.0.1:4000")
    assert allow == (*plan.allow, "127.0.0.1:4000", *(h.target for h in plan.ssh))
    assert not set(REMOTE_CONTROL_HOSTS) & set(allow)


def test_remote_env_drops_the_switches_the_gateway_and_credentials_and_keeps_the_rest(tmp_path: Path) -> None:
    usual = build_env(request(tmp_path))
    assert set(REMOTE_CONTROL_OFF) & set(usual)  # the usual environment has switches to drop
    env = remote_env(usual)
    for name in (*REMOTE_CONTROL_OFF, "ANTHROPIC_BASE_URL", *CREDENTIAL_NAMES):
        assert name not in env, name
    kept = {name: value for name, value in usual.items() if name not in env}
    assert set(kept) <= {*REMOTE_CONTROL_OFF, "ANTHROPIC_BASE_URL", *CREDENTIAL_NAMES}
    assert env["CLAUDE_CONFIG_DIR"] == str(tmp_path / "agent")
    assert env["KEEP_ME"] == "yes"
    for name in set(OFFLINE_ENV) - set(REMOTE_CONTROL_OFF):  # the other safe settings stay
        assert env[name] == OFFLINE_ENV[name]


def test_remote_managed_settings_pin_anthropic_and_keep_the_policy(tmp_path: Path) -> None:
    usual = managed_settings(request(tmp_path))
    managed = remote_managed_settings(usual)
    assert managed["env"]["ANTHROPIC_BASE_URL"] == REMOTE_API_URL
    assert not set(REMOTE_CONTROL_OFF) & set(managed["env"])
    assert managed["permissions"] == usual["permissions"]
    assert {k: v for k, v in managed.items() if k != "env"} == {k: v for k, v in usual.items() if k != "env"}
    assert usual["env"]["ANTHROPIC_BASE_URL"] != REMOTE_API_URL  # the input is not changed


def test_argv_asks_for_remote_control_under_the_session_name(project: Path, tmp_path: Path) -> None:
    plan = dataclasses.replace(plan_of(project, tmp_path / "home"), name="coder-3")
    argv = interactive_argv(Path("/opt/claude"), plan)
    assert argv[argv.index("--remote-control") + 1] == "coder-3"
    assert "--remote-control" not in interactive_argv(
        Path("/opt/claude"), dataclasses.replace(plan, remote_control=False)
    )


def test_plan_says_the_login_goes_inside_and_which_hosts(project: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    missing = format_plan(plan_of(project, home))
    assert "remote control: ON, but no claude.ai login is adopted" in missing
    assert "corral auth import-claude-dir" in missing
    adopt(home, tmp_path / "login")
    plan = plan_of(project, home)
    assert plan.login == (tmp_path / "login").resolve()
    text = format_plan(plan)
    line = next(row for row in text.splitlines() if row.startswith("remote control:"))
    assert "ON: the session uses your claude.ai login" in line
    assert f"from {plan.login}, copied INTO the sandbox" in line
    assert all(host in line for host in REMOTE_CONTROL_HOSTS)
    egress = next(row for row in text.splitlines() if row.startswith("egress:"))
    assert all(host in egress for host in REMOTE_CONTROL_HOSTS)
    assert "gateway (the credential" not in egress
    plain = format_plan(plan_of(project, home, remote=False))
    assert "remote control: off" in plain
    assert not any(host in plain for host in REMOTE_CONTROL_HOSTS)


# --- refusals before asking ---


@pytest.mark.parametrize("stored", ["nothing", "token"])
def test_no_adopted_login_is_refused_with_the_command_that_fixes_it(project: Path, tmp_path: Path, stored: str) -> None:
    home = tmp_path / "home"
    if stored == "token":
        CredentialStore(home).set_token("sk-ant-oat01-" + token_urlsafe(24))
    plan = plan_of(project, home)
    assert plan.login is None
    with pytest.raises(CredentialsError) as caught:
        check_startable(plan, sandbox_for(plan, Settings(home=home)))
    assert str(caught.value) == NO_LOGIN
    assert "`corral auth import-claude-dir ~/.claude`" in NO_LOGIN
    assert "claude.ai login" in NO_LOGIN


def test_a_broken_adopted_login_is_refused(project: Path, tmp_path: Path) -> None:
    home, login = tmp_path / "home", tmp_path / "login"
    adopt(home, login)
    write_json(login / ".credentials.json", {"claudeAiOauth": oauth_entry(refreshToken=None)})
    plan = plan_of(project, home)
    with pytest.raises(CredentialsError, match=r"its refreshToken is missing .* log in again with `CLAUDE_CONFIG_DIR="):
        check_startable(plan, sandbox_for(plan, Settings(home=home)))
    (login / ".credentials.json").unlink()
    with pytest.raises(CredentialsError, match=r"There is no Claude Code login in .*\.credentials\.json does not"):
        check_startable(plan, sandbox_for(plan, Settings(home=home)))


def test_env_names_that_turn_remote_control_off_are_refused(project: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    adopt(home, tmp_path / "login")
    plan = plan_of(project, home, "leaky")
    with pytest.raises(UsageError, match=r"forwards DO_NOT_TRACK, ANTHROPIC_API_KEY, which a remote-control"):
        check_startable(plan, sandbox_for(plan, Settings(home=home)))
    good = plan_of(project, home)
    check_startable(good, sandbox_for(good, Settings(home=home)))  # an adopted login: nothing refused


# --- the login entry ---


def test_parse_keeps_the_known_fields_only_and_masks_the_tokens() -> None:
    entry = oauth_entry(clientId="9d1c250a-e61b", extra="x")
    login = ClaudeLogin.parse({"claudeAiOauth": entry, "other": {"accessToken": "no"}})
    assert login.access_token.reveal() == entry["accessToken"]
    assert login.to_json() == {k: v for k, v in entry.items() if k != "extra"}
    assert entry["accessToken"] not in repr(login)
    assert entry["refreshToken"] not in repr(login)
    no_extras = ClaudeLogin.parse(
        {"claudeAiOauth": {k: entry[k] for k in ("accessToken", "refreshToken", "expiresAt")}}
    )
    assert no_extras.to_json() == {
        **{k: entry[k] for k in ("accessToken", "refreshToken", "expiresAt")},
        "subscriptionType": None,
        "rateLimitTier": None,
    }


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ([], "no claudeAiOauth object"),
        ({"claudeAiOauth": "sk-ant-oat01-xxxxxxxxxxxxxxxx"}, "no claudeAiOauth object"),
        ({"claudeAiOauth": oauth_entry(accessToken=5)}, "its accessToken is missing or is not a token"),
        ({"claudeAiOauth": oauth_entry(accessToken="sk-ant-api03-" + "x" * 20)}, "its accessToken is missing"),
        ({"claudeAiOauth": oauth_entry(accessToken="sk-ant-oat01-abc def-ghijklmn")}, "its accessToken is missing"),
        ({"claudeAiOauth": oauth_entry(accessToken="sk-ant-oat01-" + "x" * 5000)}, "its accessToken is missing"),
        ({"claudeAiOauth": oauth_entry(refreshToken="")}, "its refreshToken is missing or is not a token"),
        ({"claudeAiOauth": oauth_entry(expires="tomorrow")}, "its expiresAt is not a time"),
        ({"claudeAiOauth": oauth_entry(expires=True)}, "its expiresAt is not a time"),
        ({"claudeAiOauth": oauth_entry(expires=0)}, "its expiresAt is not a time"),
        ({"claudeAiOauth": oauth_entry(expires=10**16)}, "its expiresAt is not a time"),
        ({"claudeAiOauth": oauth_entry(scopes="user:inference")}, "its scopes are not a short list"),
        ({"claudeAiOauth": oauth_entry(scopes=["user inference"])}, "its scopes are not a short list"),
        ({"claudeAiOauth": oauth_entry(subscriptionType={"a": 1})}, "its subscriptionType is not a short name"),
        ({"claudeAiOauth": oauth_entry(rateLimitTier="x\n" * 3)}, "its rateLimitTier is not a short name"),
    ],
)
def test_parse_refuses_each_malformed_field(data: object, why: str) -> None:
    with pytest.raises(CredentialsError, match=why):
        ClaudeLogin.parse(data)


def test_session_login_file_is_new_private_and_holds_the_entry_only(tmp_path: Path) -> None:
    login = ClaudeLogin.parse({"claudeAiOauth": oauth_entry()})
    path = write_session_login(tmp_path, login)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"claudeAiOauth": login.to_json()}
    assert read_session_login(tmp_path) == login
    with pytest.raises(FileExistsError):
        write_session_login(tmp_path, login)


# --- carrying a refreshed login back ---


def logins(count: int) -> list[ClaudeLogin]:
    return [ClaudeLogin.parse({"claudeAiOauth": oauth_entry(EXPIRES + i * HOUR_MS)}) for i in range(count)]


def test_carry_decision_as_a_table() -> None:
    sent, later, other = logins(3)
    earlier = ClaudeLogin.parse({"claudeAiOauth": oauth_entry(EXPIRES - HOUR_MS)})
    assert carry_decision(sent, sent, sent) == "unchanged"
    assert carry_decision(sent, None, sent) == "missing"
    assert carry_decision(sent, later, sent) == "carried"
    assert carry_decision(sent, later, other) == "conflict"  # the host's changed meanwhile
    assert carry_decision(sent, later, None) == "conflict"  # the host's is gone or damaged
    assert carry_decision(sent, earlier, sent) == "older"
    same_expiry = dataclasses.replace(sent, access_token=later.access_token, refresh_token=later.refresh_token)
    assert carry_decision(sent, same_expiry, sent) == "carried"


@pytest.fixture
def carry(tmp_path: Path) -> tuple[CredentialStore, Path, Path, ClaudeLogin, dict[str, Any]]:
    """A store, the adopted dir, a session's config dir holding what was sent, and the host file's JSON."""
    home, adopted, inside = tmp_path / "home", tmp_path / "login", tmp_path / "agent"
    data = adopt(home, adopted)
    store = CredentialStore(home)
    sent = session_login(store.adopted_dir())
    inside.mkdir()
    write_session_login(inside, sent)
    return store, adopted, inside, sent, data


Carry = tuple[CredentialStore, Path, Path, ClaudeLogin, dict[str, Any]]


def test_a_refreshed_login_is_carried_back_merged_private_and_atomic(carry: Carry) -> None:
    store, adopted, inside, sent, data = carry
    host = adopted / ".credentials.json"
    host.chmod(0o644)
    inode = host.stat().st_ino
    fresh = oauth_entry(sent.expires_at + 8 * HOUR_MS, clientId="client-1", sneaky="x")
    write_json(inside / ".credentials.json", {"claudeAiOauth": fresh, "mcpOAuth": {"evil": {}}, "extra": 1})
    said = carry_back(store, adopted, inside, sent)
    assert said.startswith("The session refreshed your claude.ai login; carried it back to")
    written = json.loads(host.read_text())
    assert written == {**data, "claudeAiOauth": {k: v for k, v in fresh.items() if k != "sneaky"}}
    assert stat.S_IMODE(host.stat().st_mode) == 0o600
    assert host.stat().st_ino != inode  # replaced by a rename, not written in place
    assert sorted(p.name for p in adopted.iterdir()) == [".credentials.json"]  # no temporary file left
    assert read_session_login(adopted).refresh_token.reveal() == fresh["refreshToken"]


def test_an_unchanged_login_leaves_the_host_file_alone(carry: Carry) -> None:
    store, adopted, inside, sent, _ = carry
    before = (adopted / ".credentials.json").stat()
    assert carry_back(store, adopted, inside, sent) == ""
    after = (adopted / ".credentials.json").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def hostile(inside: Path, kind: str, fresh: dict[str, Any], outside: Path) -> None:
    """What a hostile sandbox can leave in its config dir instead of a login."""
    path = inside / ".credentials.json"
    path.unlink()
    if kind == "not json":
        path.write_text("{not json")
    elif kind == "bad field":
        write_json(path, {"claudeAiOauth": {**fresh, "expiresAt": "soon"}})
    elif kind == "file symlink":
        write_json(outside, {"claudeAiOauth": fresh})
        path.symlink_to(outside)
    elif kind == "dir symlink":
        write_json(outside.parent / "elsewhere" / ".credentials.json", {"claudeAiOauth": fresh})
        inside.rename(inside.with_name("agent.old"))
        inside.symlink_to(outside.parent / "elsewhere")
    elif kind == "hard link":
        write_json(outside, {"claudeAiOauth": fresh})
        os.link(outside, path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "huge":
        path.write_text(json.dumps({"claudeAiOauth": fresh, "pad": "x" * 70_000}))


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("not json", "it is not JSON"),
        ("bad field", "its expiresAt is not a time"),
        ("file symlink", "the file is a symbolic link"),
        ("dir symlink", "its directory is a symbolic link"),
        ("hard link", "the file is not a plain regular file"),
        ("fifo", "the file is not a plain regular file"),
        ("huge", "the file is larger than 64 KiB"),
    ],
)
def test_a_bad_file_left_by_the_session_is_refused_and_the_host_file_kept(
    carry: Carry, tmp_path: Path, kind: str, why: str
) -> None:
    store, adopted, inside, sent, _ = carry
    before = (adopted / ".credentials.json").read_bytes()
    hostile(inside, kind, oauth_entry(sent.expires_at + HOUR_MS), tmp_path / "outside.json")
    said = carry_back(store, adopted, inside, sent)
    assert said.startswith(f"The login the session left is not a valid claude.ai login ({why}")
    assert f"kept {adopted / '.credentials.json'} as it was" in said
    assert (adopted / ".credentials.json").read_bytes() == before


@pytest.mark.parametrize("case", ["missing", "conflict", "older", "host symlink"])
def test_the_host_file_is_kept_when_the_change_cannot_be_trusted(carry: Carry, tmp_path: Path, case: str) -> None:
    store, adopted, inside, sent, data = carry
    host = adopted / ".credentials.json"
    fresh = oauth_entry(sent.expires_at + HOUR_MS)
    write_json(inside / ".credentials.json", {"claudeAiOauth": fresh})
    expected = {
        "missing": "The session left no claude.ai login file",
        "conflict": "changed on the host during the session; kept it",
        "older": "expires before the one it was given",
        "host symlink": "is a symbolic link, which corral does not replace",
    }[case]
    if case == "missing":
        (inside / ".credentials.json").unlink()
    elif case == "conflict":
        write_json(host, {**data, "claudeAiOauth": oauth_entry(sent.expires_at + 2 * HOUR_MS)})
    elif case == "older":
        write_json(inside / ".credentials.json", {"claudeAiOauth": oauth_entry(sent.expires_at - 1)})
    else:
        real = tmp_path / "real.json"
        host.rename(real)
        host.symlink_to(real)
    before = host.read_bytes()
    said = carry_back(store, adopted, inside, sent)
    assert expected in said
    assert host.read_bytes() == before
