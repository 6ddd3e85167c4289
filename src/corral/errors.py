"""The one exception tree of corral.

Every error a user can cause or meet is a ``CorralError``. Each class also inherits the
builtin it resembles, carries the process ``exit_code`` the CLI exits with and the HTTP
``status`` the API answers with, and its message is a sentence that names the bad value and
says the fix::

    CorralError
    ├── UsageError (ValueError)                 exit 2,   HTTP 400
    │   ├── SettingsError                       exit 3,   HTTP 500
    │   ├── BadLimitError                       exit 4,   HTTP 400
    │   ├── WorkspaceError (FileNotFoundError)  exit 5,   HTTP 400
    │   ├── PolicyError                         exit 6,   HTTP 400
    │   ├── AuditLogError                       exit 7,   HTTP 400
    │   ├── NotFoundError (LookupError)         exit 8,   HTTP 404
    │   ├── ConflictError                       exit 9,   HTTP 409
    │   ├── RepoError                           exit 10,  HTTP 400
    │   ├── CredentialsError                    exit 11,  HTTP 503
    │   └── CommandNotFoundError                exit 127, HTTP 400
    ├── GitError (RuntimeError)                 exit 75,  HTTP 502
    ├── AgentError (RuntimeError)               exit 71,  HTTP 500
    └── SandboxError (RuntimeError)             exit 70,  HTTP 500
        └── SandboxUnavailableError             exit 69,  HTTP 503
"""

from __future__ import annotations

__all__ = [
    "AgentError",
    "AuditLogError",
    "BadLimitError",
    "CommandNotFoundError",
    "ConflictError",
    "CorralError",
    "CredentialsError",
    "GitError",
    "NotFoundError",
    "PolicyError",
    "RepoError",
    "SandboxError",
    "SandboxUnavailableError",
    "SettingsError",
    "UsageError",
    "WorkspaceError",
]


class CorralError(Exception):
    """Base of every corral error; ``str(err)`` is a sentence for the user."""

    exit_code: int = 1
    status: int = 500
    code: str = "error"


class UsageError(CorralError, ValueError):
    """The caller asked for something that cannot be done as asked."""

    exit_code = 2
    status = 400
    code = "bad_request"


class SettingsError(UsageError):
    """A setting in the environment or in ``corral.toml`` is invalid."""

    exit_code = 3
    status = 500
    code = "bad_settings"


class BadLimitError(UsageError):
    """A resource limit could not be parsed or is out of range."""

    exit_code = 4
    code = "bad_limit"


class WorkspaceError(UsageError, FileNotFoundError):
    """The workspace or a path to bind is missing or unusable."""

    exit_code = 5
    code = "bad_workspace"


class PolicyError(UsageError):
    """An egress allow or deny pattern is malformed or too broad."""

    exit_code = 6
    code = "bad_policy"


class AuditLogError(UsageError):
    """An audit log cannot be written or read."""

    exit_code = 7
    code = "bad_audit_log"


class NotFoundError(UsageError, LookupError):
    """A job, credential or other named thing does not exist."""

    exit_code = 8
    status = 404
    code = "not_found"


class ConflictError(UsageError):
    """The thing asked for cannot happen in the current state (a finished job cannot be cancelled)."""

    exit_code = 9
    status = 409
    code = "conflict"


class RepoError(UsageError):
    """A repository URL or ref is malformed, hostile, or not allowed by the settings."""

    exit_code = 10
    code = "bad_repo"


class CredentialsError(UsageError):
    """No usable Claude credential, or a credential file that cannot be read."""

    exit_code = 11
    status = 503
    code = "no_credentials"


class CommandNotFoundError(UsageError):
    """The command to run does not exist inside the sandbox."""

    exit_code = 127
    code = "command_not_found"


class GitError(CorralError, RuntimeError):
    """A git command on the host failed (the remote is unreachable, the ref does not exist...)."""

    exit_code = 75
    status = 502
    code = "git_failed"


class AgentError(CorralError, RuntimeError):
    """The agent could not be started or its output could not be read."""

    exit_code = 71
    code = "agent_failed"


class SandboxError(CorralError, RuntimeError):
    """The sandbox failed for a reason that is not the caller's input."""

    exit_code = 70
    code = "sandbox_failed"


class SandboxUnavailableError(SandboxError):
    """This machine cannot run sandboxes; ``corral doctor`` says why."""

    exit_code = 69
    status = 503
    code = "sandbox_unavailable"
