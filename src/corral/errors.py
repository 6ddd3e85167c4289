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
    │   └── CommandNotFoundError                exit 127, HTTP 400
    └── SandboxError (RuntimeError)             exit 70,  HTTP 500
        └── SandboxUnavailableError             exit 69,  HTTP 503
"""

from __future__ import annotations

__all__ = [
    "AuditLogError",
    "BadLimitError",
    "CommandNotFoundError",
    "CorralError",
    "PolicyError",
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


class CommandNotFoundError(UsageError):
    """The command to run does not exist inside the sandbox."""

    exit_code = 127
    code = "command_not_found"


class SandboxError(CorralError, RuntimeError):
    """The sandbox failed for a reason that is not the caller's input."""

    exit_code = 70
    code = "sandbox_failed"


class SandboxUnavailableError(SandboxError):
    """This machine cannot run sandboxes; ``corral doctor`` says why."""

    exit_code = 69
    status = 503
    code = "sandbox_unavailable"
