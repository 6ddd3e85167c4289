"""Escape attempts that try to read the host's secrets: keys, corral's credentials, root's files."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.errors import UsageError
from corral.sandbox.bwrap import BwrapSandbox
from corral.settings import Settings
from tests.security.attack import Attacker
from tests.tools import require_root

pytestmark = pytest.mark.sandbox

KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A caller's home with an SSH key and git credentials, made the caller's HOME."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh/id_rsa").write_text(KEY)
    (home / ".git-credentials").write_text("https://bot:token@example.com\n")
    (home / "notes.txt").write_text("not a secret\n")
    monkeypatch.setenv("HOME", str(home))
    assert Path.home() == home
    return home


def test_caller_ssh_key_is_out_of_sight(attacker: Attacker, home: Path) -> None:
    """The attacker reads the caller's ~/.ssh/id_rsa by its host path."""
    assert attacker.attempts(f"open({str(home / '.ssh/id_rsa')!r}).read()", f"os.listdir({str(home)!r})") == [
        "ENOENT",
        "ENOENT",
    ]


def test_ssh_key_is_masked_when_the_home_is_the_workspace(sandbox: BwrapSandbox, home: Path) -> None:
    """Given the caller's home as its workspace, the attacker reads and replaces ~/.ssh/id_rsa."""
    attacker = Attacker(sandbox, home)
    assert attacker.attempts(
        "open('.ssh/id_rsa').read()",
        "open('.ssh/id_rsa', 'w')",
        "open('.git-credentials').read()",  # a file is masked by a nodev /dev/null
        "open('notes.txt').read()",
    ) == ["ENOENT", "EROFS", "EACCES", "ok"]
    assert attacker.evaluate("os.listdir('.ssh')") == []
    assert (home / ".ssh/id_rsa").read_text() == KEY


@pytest.mark.parametrize("through", ["workspace", "HOME"])
def test_ssh_key_is_masked_when_the_home_is_named_through_a_symlink(
    sandbox: BwrapSandbox, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, through: str
) -> None:
    """Given the caller's home as its workspace, under another name than HOME's (one of the two goes through a
    symlink, as with /home -> /var/home), the attacker reads ~/.ssh/id_rsa."""
    alias = tmp_path / "home-alias"
    alias.symlink_to(home)
    if through == "HOME":
        monkeypatch.setenv("HOME", str(alias))
    attacker = Attacker(sandbox, alias if through == "workspace" else home)
    assert attacker.attempts("open('.ssh/id_rsa').read()", "open('.ssh/id_rsa', 'a')") == ["ENOENT", "EROFS"]
    assert (home / ".ssh/id_rsa").read_text() == KEY


def test_ssh_key_is_masked_in_a_read_only_bind(attacker: Attacker, home: Path) -> None:
    """Given the caller's home as an extra read-only bind, the attacker reads ~/.ssh/id_rsa."""
    key = str(home / ".ssh/id_rsa")
    assert attacker.attempts(
        f"open({key!r}).read()", f"open({str(home / 'notes.txt')!r}).read()", ro_binds=(home,)
    ) == [
        "ENOENT",
        "ok",
    ]


def test_root_home_is_out_of_sight(attacker: Attacker) -> None:
    """The attacker lists /root and reads /root/.ssh/id_rsa."""
    outcomes = attacker.attempts("os.listdir('/root')", "open('/root/.ssh/id_rsa').read()")
    assert outcomes == attacker.on(bwrap=["ENOENT", "ENOENT"], docker=["EACCES", "EACCES"])  # the image's /root, 0700


def test_symlink_to_a_host_secret_leads_nowhere(attacker: Attacker, home: Path) -> None:
    """The attacker plants symlinks in the workspace to /root/.ssh and to the caller's ~/.ssh and reads through them."""
    code = f"""
        os.symlink('/root/.ssh', 'root-ssh')
        os.symlink({str(home / ".ssh")!r}, 'caller-ssh')
    """
    assert attacker.evaluate(
        "[outcome(lambda: open('root-ssh/id_rsa').read()), outcome(lambda: open('caller-ssh/id_rsa').read())]",
        setup=code,
    ) == [attacker.on(bwrap="ENOENT", docker="EACCES"), "ENOENT"]  # the image's own /root is 0700


def test_corral_home_is_out_of_sight(attacker: Attacker, settings: Settings) -> None:
    """The attacker reads the credentials file under CORRAL_HOME by its host path."""
    credentials = settings.home / "credentials.json"
    credentials.write_text('{"token": "sk-ant-secret"}')
    assert attacker.attempt(f"open({str(credentials)!r}).read()") == "ENOENT"


def test_corral_home_is_masked_inside_a_bound_tree(workspace: Path, tmp_path: Path) -> None:
    """The attacker is given a read-only tree that contains CORRAL_HOME and reads the credentials in it."""
    tree = tmp_path / "tree"
    home = tree / "corral-home"
    home.mkdir(parents=True)
    (home / "credentials.json").write_text('{"token": "sk-ant-secret"}')
    attacker = Attacker(BwrapSandbox(Settings(home=home)), workspace)
    result = attacker.evaluate(
        f"[os.listdir({str(home)!r}), outcome(lambda: open({str(home / 'credentials.json')!r}))]", ro_binds=(tree,)
    )
    assert result == [[], "ENOENT"]


def test_binding_corral_home_is_refused(attacker: Attacker, settings: Settings) -> None:
    """The caller is talked into binding CORRAL_HOME (or a directory inside it) into the sandbox."""
    (settings.home / "cache").mkdir(exist_ok=True)
    for path in (settings.home, settings.home / "cache"):
        with pytest.raises(UsageError, match="holds secrets and is never visible"):
            attacker.run("true", ro_binds=(path,))


def test_denied_path_is_masked_inside_a_bound_tree(attacker: Attacker, tmp_path: Path) -> None:
    """The attacker reads a path the spec denies, inside a tree the spec binds."""
    tree = tmp_path / "tree"
    (tree / "private").mkdir(parents=True)
    (tree / "private/key").write_text("secret")
    (tree / "public.txt").write_text("fine")
    outcomes = attacker.attempts(
        f"open({str(tree / 'public.txt')!r}).read()",
        f"open({str(tree / 'private/key')!r}).read()",
        ro_binds=(tree,),
        deny=(tree / "private",),
    )
    assert outcomes == ["ok", "ENOENT"]


def test_etc_shadow_is_unreadable(attacker: Attacker) -> None:
    """The attacker reads /etc/shadow, which is visible (all of /etc is) but root's."""
    assert attacker.attempts("os.stat('/etc/shadow')", "open('/etc/shadow').read()") == ["ok", "EACCES"]


def test_root_only_file_bound_in_is_unreadable(attacker: Attacker, tmp_path: Path) -> None:
    """The attacker reads a root-owned mode-0600 file that the caller bound in read-only: it is not host root."""
    require_root()
    secret = tmp_path / "root-only.key"
    secret.write_text("secret")
    secret.chmod(0o600)
    assert attacker.attempts(f"os.stat({str(secret)!r})", f"open({str(secret)!r}).read()", ro_binds=(secret,)) == [
        "ok",
        "EACCES",
    ]


@pytest.fixture
def agent_socket(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A listening SSH agent socket inside the workspace, named by SSH_AUTH_SOCK."""
    path = workspace / "agent.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()
        monkeypatch.setenv("SSH_AUTH_SOCK", str(path))
        yield path
    path.unlink()


def test_ssh_agent_socket_is_masked(attacker: Attacker, agent_socket: Path) -> None:
    """The attacker connects to the caller's SSH agent socket, which lies in its own workspace."""
    setup = f"""
        mode = os.stat({str(agent_socket)!r}).st_mode
        def connect():
            socket.socket(socket.AF_UNIX).connect({str(agent_socket)!r})
    """
    result = attacker.evaluate(
        "[stat.S_ISSOCK(mode), stat.S_ISCHR(mode), outcome(connect), 'SSH_AUTH_SOCK' in os.environ]", setup=setup
    )
    masked_by_dev_null = attacker.on(bwrap=True, docker=False)  # docker masks with an empty file of mode 0
    assert result == [False, masked_by_dev_null, "EPERM", False]
