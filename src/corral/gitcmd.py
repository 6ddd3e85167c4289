"""Git commands as data: checks of user input, the clean environment, and one way to run git.

Everything a user gives corral about a repository passes ``check_url`` and ``check_ref`` before
any git process starts. ``check_url`` refuses git's remote-helper syntax (``ext::``, ``fd::``),
option injection (a leading ``-``), whitespace and control characters (also percent-encoded),
and local repositories unless they are allowed. ``Remote`` splits the credentials off an
``https://user:token@host/...`` URL: git sees only the credential-free URL, and the credentials
reach it through ``askpass`` (a ``GIT_ASKPASS`` script reading an environment variable of that
one git process), so they never land in argv, a config file, or a message.

``run`` executes git with an environment built from nothing (``environment``) and with
``HARDENING`` in front of every subcommand, so neither the host's git configuration nor a
repository's own can make git run a program corral did not choose; ``git`` runs it in a
checkout or a mirror.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import unicodedata
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from corral.errors import GitError, RepoError
from corral.secrets import Secret

__all__ = [
    "HARDENING",
    "TIMEOUT",
    "Remote",
    "Status",
    "askpass",
    "check_ref",
    "check_url",
    "config_section",
    "environment",
    "git",
    "mask_url",
    "mirror_name",
    "packed_refs",
    "parse_author",
    "parse_status",
    "protocols",
    "run",
    "untrusted_config",
]

TIMEOUT = 900.0
"""Seconds one git command may take before its whole process group is killed."""

NETWORK_SCHEMES = ("https", "http", "ssh", "git")
LOCAL_FIX = "set CORRAL_GIT_ALLOW_LOCAL=true to allow local repositories"
FORMS = "use https://host/path, ssh://host/path, git://host/path or user@host:path"

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s?#]*@")
_HELPER = re.compile(r"^[A-Za-z0-9+.-]*::")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SCP = re.compile(r"^(?:(?P<user>[^@/:]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9._-]*):(?P<path>.+)$")
_ENCODED_CONTROL = re.compile(r"%(?:[01][0-9A-Fa-f]|7[Ff])")
_HEX_SHA = re.compile(r"^[0-9a-fA-F]{7,40}$")
_REF_FORBIDDEN = frozenset(" ~^:?*[\\")
_AUTHOR = re.compile(r"^([^<>\n]+?)\s*<([^<>\s]+)>$")

PASSED_ENV = (
    "PATH",
    "HOME",
    "SSH_AUTH_SOCK",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)
"""What git on the host may inherit: where programs are, the ssh agent, proxies and CA bundles."""

HARDENING = (
    *("-c", "core.hooksPath=/dev/null"),
    *("-c", "core.fsmonitor=false"),
    *("-c", "core.pager=cat"),
    *("-c", "core.editor=false"),
    *("-c", "core.askPass="),
    *("-c", "core.attributesFile=/dev/null"),
    *("-c", "core.sshCommand=ssh -o BatchMode=yes"),
    *("-c", "credential.helper="),
    *("-c", "commit.gpgSign=false"),
    *("-c", "tag.gpgSign=false"),
    *("-c", "push.gpgSign=false"),
    *("-c", "submodule.recurse=false"),
    *("-c", "fetch.recurseSubmodules=false"),
    *("-c", "push.recurseSubmodules=no"),
    *("-c", "gc.auto=0"),
    *("-c", "maintenance.auto=false"),
)
"""``-c`` options before every git subcommand: no hooks, no fsmonitor, pager, editor, credential
helper, signing or submodule recursion, whatever a config file says (``-c`` wins over files)."""


def mask_url(text: str) -> str:
    """``text`` with the userinfo (``user:token@``) of every URL in it replaced by ``***@``."""
    return _USERINFO.sub(r"\1***@", text)


def _refuse(url: str, reason: str, fix: str) -> RepoError:
    return RepoError(f"The repository URL {mask_url(url)!r} {reason}; {fix}.")


def _has_control(text: str) -> bool:
    return any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in text)


def check_url(url: str, *, allow_local: bool = False) -> str:
    """``url`` if git may fetch it, else ``RepoError`` naming the value (masked) and the fix."""
    if not url:
        msg = f"The repository URL is empty; {FORMS}."
        raise RepoError(msg)
    if _has_control(url) or _ENCODED_CONTROL.search(url):
        raise _refuse(url, "contains whitespace or a control character", "remove them")
    if url.startswith("-"):
        raise _refuse(url, "starts with '-', which git would read as an option", FORMS)
    if _HELPER.match(url):
        raise _refuse(url, "uses git's '<transport>::' remote-helper syntax, which runs programs", FORMS)
    scheme = _SCHEME.match(url)
    if scheme is not None:
        name = scheme.group(1).lower()
        if name == "file":
            if not allow_local:
                raise _refuse(url, "is a local repository", LOCAL_FIX)
            return url
        if name not in NETWORK_SCHEMES:
            raise _refuse(url, f"uses the scheme {name!r}, which corral does not allow", FORMS)
        _check_network_url(url, name)
        return url
    if _is_scp(url):
        if ":" in url.rpartition("@")[0]:
            raise _refuse(url, "carries a password, which ssh does not take", "use an ssh key instead")
        return url
    if ":" in url.split("/", 1)[0]:
        raise _refuse(url, "is neither a URL nor user@host:path", FORMS)
    if not allow_local:
        raise _refuse(url, "is a local path", LOCAL_FIX)
    return url


def _is_scp(url: str) -> bool:
    """git's test: a colon before any slash makes ``[user@]host:path`` an ssh address."""
    return _SCP.match(url) is not None and "/" not in url.split(":", 1)[0]


def _check_network_url(url: str, scheme: str) -> None:
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018 (raises ValueError on a port that is not a number)
    except ValueError:
        raise _refuse(url, "has a port that is not a number", FORMS) from None
    host = parts.hostname or ""
    if not host or host.startswith("-"):
        raise _refuse(url, "names no valid host", FORMS)
    if parts.username is not None and parts.username.startswith("-"):
        raise _refuse(url, "has a user name that starts with '-'", FORMS)
    if scheme in ("ssh", "git") and parts.password is not None:
        raise _refuse(url, f"carries a password, which {scheme}:// does not take", "use an ssh key instead")
    if scheme == "git" and parts.username is not None:
        raise _refuse(url, "carries a user name, which git:// does not take", "remove it")
    if parts.path.strip("/") == "":
        raise _refuse(url, "names no repository path", FORMS)


def check_ref(ref: str) -> str:
    """``ref`` if it is a valid ref name (git check-ref-format) or a 7-40 digit hex SHA."""
    if _HEX_SHA.match(ref):
        return ref
    reason = _ref_problem(ref)
    if reason is not None:
        msg = f"The git ref {ref!r} is not valid ({reason}); give a branch, a tag or a commit SHA."
        raise RepoError(msg)
    return ref


def _ref_problem(ref: str) -> str | None:
    if not ref:
        return "it is empty"
    if ref.startswith("-"):
        return "it starts with '-'"
    if _has_control(ref) or _REF_FORBIDDEN.intersection(ref):
        return "it contains whitespace, a control character or one of ~^:?*[\\"
    if ref == "@" or "@{" in ref:
        return "it contains '@{' or is '@'"
    if ".." in ref:
        return "it contains '..'"
    if ref.endswith(".") or ref.endswith("/") or ref.startswith("/"):
        return "it starts with '/' or ends with '/' or '.'"
    for part in ref.split("/"):
        if not part:
            return "it contains '//'"
        if part.startswith(".") or part.endswith(".lock"):
            return "a component starts with '.' or ends with '.lock'"
    return None


@dataclasses.dataclass(frozen=True)
class Remote:
    """A checked URL split into what git may see (``url``) and the credentials it may not."""

    url: str
    username: str | None = None
    password: Secret | None = None

    @classmethod
    def parse(cls, url: str, *, allow_local: bool = False) -> Remote:
        """Check ``url``; an http(s) URL's userinfo moves into ``username`` and ``password``."""
        check_url(url, allow_local=allow_local)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or "@" not in parts.netloc:
            return cls(url)
        userinfo, _, hostport = parts.netloc.rpartition("@")
        user, colon, password = userinfo.partition(":")
        clean = urllib.parse.urlunsplit(parts._replace(netloc=hostport))
        return cls(
            clean,
            urllib.parse.unquote(user) or None,
            Secret(urllib.parse.unquote(password)) if colon else None,
        )

    @property
    def local(self) -> bool:
        """Whether git reaches it through the file protocol."""
        scheme = _SCHEME.match(self.url)
        if scheme is not None:
            return scheme.group(1).lower() == "file"
        return not _is_scp(self.url)


def mirror_name(url: str) -> str:
    """``<readable>-<hash>`` naming the mirror of a credential-free URL."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    tail = re.split(r"[/:]", url.rstrip("/"))[-1].removesuffix(".git")
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", tail).strip("._-")[:48] or "repo"
    return f"{readable}-{digest}"


def parse_author(author: str) -> tuple[str, str]:
    """``("Name", "email")`` from ``"Name <email>"``."""
    match = _AUTHOR.match(author.strip())
    if match is None:
        msg = f"The git author {author!r} is not of the form 'Name <email>'; set CORRAL_GIT_AUTHOR like that."
        raise RepoError(msg)
    return match.group(1), match.group(2)


_TRUSTED_CONFIG = re.compile(
    r"^(?:core\.(?:repositoryformatversion|filemode|bare|logallrefupdates|symlinks|ignorecase|precomposeunicode)"
    r"|extensions\.objectformat|remote\.origin\.(?:url|fetch)|branch\..+\.(?:remote|merge))$",
    re.DOTALL,
)


def config_section(name: str, values: Sequence[tuple[str, str]]) -> str:
    """A git config section ``[name]`` or ``[name "sub"]`` (``name`` as ``remote.origin``), values quoted.

    Inside double quotes only ``\\`` and ``"`` need escaping; a value with a line break or a NUL
    cannot be written (``check_url`` and ``check_ref`` refuse them before).
    """
    section, dot, sub = name.partition(".")
    lines = [f'[{section} "{_quote(sub)}"]' if dot else f"[{section}]"]
    lines += [f'\t{key} = "{_quote(value)}"' for key, value in values]
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    if "\n" in text or "\0" in text:
        msg = f"The git config value {mask_url(text)!r} contains a line break or a NUL; it cannot be written."
        raise RepoError(msg)
    return text.replace("\\", "\\\\").replace('"', '\\"')


def packed_refs(refs: Iterable[tuple[str, str]]) -> str:
    """The ``packed-refs`` of a clone: ``(sha, name)`` pairs as git reads them, sorted by name."""
    lines = ["# pack-refs with: sorted "]
    lines += [f"{sha} {name}" for sha, name in sorted(refs, key=lambda ref: ref[1].encode())]
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class Status:
    """What ``git status --porcelain=v2 --branch -z`` says: the branch, its commit, and the changes."""

    head: str | None
    """The checked-out branch's short name, or None when HEAD is detached."""
    oid: str | None
    """The commit HEAD points at, or None on an unborn branch."""
    changes: int
    """Entries for changed, staged, unmerged or untracked paths."""


def parse_status(output: bytes) -> Status:
    """Read the ``--porcelain=v2 --branch -z`` output of ``git status``."""
    head: str | None = None
    oid: str | None = None
    changes = 0
    records = iter(output.split(b"\0"))
    for record in records:
        if not record:
            continue
        if record.startswith(b"# branch.head "):
            name = os.fsdecode(record[len(b"# branch.head ") :])
            head = None if name == "(detached)" else name
        elif record.startswith(b"# branch.oid "):
            value = record[len(b"# branch.oid ") :].decode(errors="replace")
            oid = None if value == "(initial)" else value
        elif record.startswith(b"#"):
            continue
        else:
            changes += 1
            if record.startswith(b"2 "):
                next(records, None)  # a rename or copy carries its original path as the next record
    return Status(head, oid, changes)


def untrusted_config(keys: Iterable[str]) -> list[str]:
    """The keys of a checkout's config that ``git clone`` does not write: any other might run code."""
    return sorted({key for key in keys if not _TRUSTED_CONFIG.match(key)})


def protocols(*, local: bool) -> tuple[str, ...]:
    """``-c`` options allowing the network protocols, and ``file`` only if ``local``."""
    allowed = (*NETWORK_SCHEMES, "file") if local else NETWORK_SCHEMES
    options = ["-c", "protocol.allow=never"]
    for name in allowed:
        options += ["-c", f"protocol.{name}.allow=always"]
    return tuple(options)


def environment(source: Mapping[str, str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A git environment built from nothing: ``PASSED_ENV`` from ``source``, then corral's own."""
    env = {name: source[name] for name in PASSED_ENV if name in source}
    env.setdefault("PATH", os.defpath)
    env.update(
        LC_ALL="C",
        LANG="C",
        GIT_TERMINAL_PROMPT="0",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_ATTR_NOSYSTEM="1",
        GIT_SSH_COMMAND="ssh -o BatchMode=yes",
    )
    env.update(extra or {})
    return env


ASKPASS_SCRIPT = """#!/bin/sh
case "$1" in
  Username*) printf '%s\\n' "$CORRAL_GIT_USERNAME" ;;
  *) printf '%s\\n' "$CORRAL_GIT_PASSWORD" ;;
esac
"""


@contextlib.contextmanager
def askpass(username: str, password: Secret) -> Iterator[dict[str, str]]:
    """The environment for one git process that answers its prompts with these credentials.

    The script (mode 0700, in a private 0700 directory, removed afterwards) prints the values of
    ``CORRAL_GIT_USERNAME`` and ``CORRAL_GIT_PASSWORD``, which exist only in that environment.
    """
    directory = Path(tempfile.mkdtemp(prefix="corral-askpass-"))
    try:
        script = directory / "askpass"
        fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
        with os.fdopen(fd, "w") as fh:
            fh.write(ASKPASS_SCRIPT)
        yield {
            "GIT_ASKPASS": str(script),
            "CORRAL_GIT_USERNAME": username,
            "CORRAL_GIT_PASSWORD": password.reveal(),
        }
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run(
    args: Sequence[str],
    *,
    what: str,
    env: Mapping[str, str],
    cwd: Path | None = None,
    timeout: float = TIMEOUT,
    secrets: Sequence[str] = (),
    ok: Sequence[int] = (0,),
) -> subprocess.CompletedProcess[bytes]:
    """Run ``git *HARDENING *args``; a failure is a ``GitError`` naming ``what`` and git's stderr.

    ``what`` is a phrase ("fetching https://host/repo"); URLs are masked and ``secrets`` blanked
    in the message. On timeout the whole process group (git and its helpers) is killed.
    """
    git = _which_git(env.get("PATH"))
    if git is None:
        msg = f"git is not on the PATH ({env.get('PATH', '')}); install git on this host."
        raise GitError(msg)
    argv = [git, *HARDENING, *args]
    try:
        proc = subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as problem:
        _GIT.pop(env.get("PATH"), None)  # look for it again next time: it may have moved
        msg = f"git could not be started while {_scrub(what, secrets)}: {problem.strerror}; check {git} and {cwd}."
        raise GitError(msg) from None
    with proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            msg = f"git took longer than {timeout:g} s while {_scrub(what, secrets)}; check the remote is reachable."
            raise GitError(msg) from None
    if proc.returncode not in ok:
        tail = _scrub(err.decode(errors="replace").strip()[-1500:], secrets) or "(no message)"
        msg = f"git failed while {_scrub(what, secrets)} (exit {proc.returncode}): {tail}"
        raise GitError(msg)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


_GIT: dict[str | None, str] = {}
"""Where git was found, per PATH: every git command asks, and looking walks the PATH with a stat per entry."""


def git(
    args: Sequence[str],
    *,
    what: str,
    repo: Path | None = None,
    bare: Path | None = None,
    cwd: Path | None = None,
    local: bool = False,
    env: dict[str, str] | None = None,
    secrets: Sequence[str] = (),
    ok: Sequence[int] = (0,),
) -> subprocess.CompletedProcess[bytes]:
    """Run git in a checkout (``repo``), a mirror (``bare``) or nowhere in particular, with the
    allowed ``protocols`` and the hardened ``environment``."""
    extra = dict(env or {})
    options = list(protocols(local=local))
    if repo is not None:
        extra.update(GIT_DIR=str(repo / ".git"), GIT_WORK_TREE=str(repo))
        options += ["-c", f"safe.directory={repo}"]
        cwd = repo
    elif bare is not None:
        extra["GIT_DIR"] = str(bare)
        cwd = bare
    return run([*options, *args], what=what, env=environment(os.environ, extra), cwd=cwd, secrets=secrets, ok=ok)


def _which_git(path: str | None) -> str | None:
    found = _GIT.get(path)
    if found is None:
        found = shutil.which("git", path=path)
        if found is not None:
            _GIT[path] = found
    return found


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return mask_url(text)
