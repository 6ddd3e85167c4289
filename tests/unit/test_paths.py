"""Protected, pinned, hidden: the mount decisions made from the spec and the host."""

from pathlib import Path

import pytest

from corral.errors import UsageError, WorkspaceError
from corral.sandbox import paths
from corral.sandbox.spec import SandboxSpec


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    (ws / ".git/hooks").mkdir(parents=True)
    (ws / ".git/config").write_text("[core]\n")
    (ws / ".bashrc").write_text("")
    (ws / "sub/.claude/commands").mkdir(parents=True)
    (ws / "sub/nested/.vscode").mkdir(parents=True)
    (ws / "node_modules/pkg/.vscode").mkdir(parents=True)  # not walked
    (ws / "worktree").mkdir()
    (ws / "worktree/.git").write_text("gitdir: /elsewhere\n")
    return ws


def test_find_protected(repo: Path) -> None:
    assert paths.find_protected(repo) == {
        repo / ".git/hooks",
        repo / ".git/config",
        repo / ".bashrc",
        repo / "sub/.claude/commands",
        repo / "sub/nested/.vscode",
        repo / "worktree/.git",
    }


def test_find_protected_stops_at_the_depth(repo: Path) -> None:
    deep = repo / "a/b/c/d"
    (deep / ".idea").mkdir(parents=True)
    assert deep / ".idea" not in paths.present(repo)
    assert deep / ".idea" in paths.present(repo, depth=4)


def test_parents_are_pinned(repo: Path) -> None:
    layout = paths.plan_layout(SandboxSpec(("true",), repo), [], paths.find_protected(repo))
    assert layout.pinned == (repo / ".git", repo / "sub", repo / "worktree", repo / "sub/.claude", repo / "sub/nested")


def test_nothing_is_created_on_the_host(repo: Path) -> None:
    before = sorted(repo.rglob("*"))
    paths.plan_layout(SandboxSpec(("true",), repo), [], paths.find_protected(repo))
    assert sorted(repo.rglob("*")) == before


def test_remove_created_removes_only_what_is_new(repo: Path) -> None:
    before = paths.present(repo)
    (repo / ".vscode").mkdir()
    (repo / ".vscode/tasks.json").write_text("{}")
    (repo / ".mcp.json").write_text("{}")
    (repo / "sub/.gitmodules").symlink_to("/etc/passwd")
    created = paths.remove_created(repo, before)
    assert created == [repo / ".mcp.json", repo / ".vscode", repo / "sub/.gitmodules"]
    assert not (repo / ".vscode").exists()
    assert not (repo / "sub/.gitmodules").is_symlink()
    assert (repo / ".bashrc").exists()


def test_secrets_inside_a_bound_tree_are_masked(repo: Path, tmp_path: Path) -> None:
    secret_dir = repo / "creds"
    secret_dir.mkdir()
    secret_file = repo / "token.txt"
    secret_file.write_text("x")
    spec = SandboxSpec(("true",), repo, deny=(secret_dir, secret_file, tmp_path / "absent"))
    layout = paths.plan_layout(spec, [], [])
    assert (secret_dir, True) in layout.masks
    assert (secret_file, False) in layout.masks
    assert all(path != tmp_path / "absent" for path, _ in layout.masks)


def test_binds_inside_secrets_are_refused(tmp_path: Path) -> None:
    home = tmp_path / "corral-home"
    (home / "creds").mkdir(parents=True)
    ws = tmp_path / "ws"
    ws.mkdir()
    with pytest.raises(UsageError, match=r"lies inside .*corral-home, which holds secrets"):
        paths.plan_layout(SandboxSpec(("true",), ws, ro_binds=(home / "creds",)), [home], [])
    with pytest.raises(UsageError, match="holds secrets"):
        paths.plan_layout(SandboxSpec(("true",), home), [home], [])


def test_missing_workspace_and_binds(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match=r"workspace .*nope does not exist") as err:
        paths.plan_layout(SandboxSpec(("true",), tmp_path / "nope"), [], [])
    assert err.value.exit_code == 5
    with pytest.raises(WorkspaceError, match=r"--ro value"):
        paths.plan_layout(SandboxSpec(("true",), tmp_path, ro_binds=(tmp_path / "gone",)), [], [])


def test_system_entries_follow_the_host(tmp_path: Path) -> None:
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "bin").symlink_to("usr/bin")
    (tmp_path / "lib").mkdir()
    assert paths.system_entries(tmp_path) == (("/usr", None), ("/etc", None), ("/bin", "usr/bin"), ("/lib", None))


def test_a_link_to_a_hooks_dir_in_the_tree_protects_the_target(repo: Path) -> None:
    (repo / ".githooks").mkdir()
    (repo / ".git/hooks").rmdir()
    (repo / ".git/hooks").symlink_to("../.githooks")
    protected = paths.find_protected(repo)
    assert repo / ".githooks" in protected
    assert repo / ".git/hooks" not in protected  # a link cannot be bound; its target is
    assert paths.remove_created(repo, paths.present(repo)) == []  # the user's own link is no violation


def test_core_hooks_path_is_protected(repo: Path) -> None:
    (repo / ".husky/_").mkdir(parents=True)
    (repo / ".git/config").write_text("[core]\n\thooksPath = .husky/_\n")
    assert repo / ".husky/_" in paths.find_protected(repo)


def test_git_metadata_that_redirects_git_is_protected(repo: Path) -> None:
    before = paths.present(repo)
    (repo / ".git/commondir").write_text("../.evil\n")
    (repo / ".git/modules/sub").mkdir(parents=True)
    (repo / "plain").mkdir()
    (repo / "plain/.git").mkdir()  # a repository the sandbox made: host git would obey its config
    assert paths.remove_created(repo, before) == [repo / ".git/commondir", repo / ".git/modules", repo / "plain/.git"]


def test_cleanup_never_follows_a_planted_link(repo: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    (victim / "hooks").mkdir(parents=True)
    (victim / "config").write_text("keep me")
    before = paths.present(repo)
    (repo / "sub/.git").symlink_to(victim)
    assert paths.remove_created(repo, before) == [repo / "sub/.git"]
    assert not (repo / "sub/.git").is_symlink()  # the link is gone ...
    assert (victim / "config").read_text() == "keep me"  # ... and what it pointed at is untouched
    assert (victim / "hooks").is_dir()
