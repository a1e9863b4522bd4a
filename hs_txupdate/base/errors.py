"""The one exception root of hs-tx and the mapping from errors to exit codes."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DAMAGED = 3
EXIT_LOCKED = 75


class HsTxError(Exception):
    """Base of every error hs-tx reports to an operator.

    Given a one-line message and an optional hint saying what to do about it.
    ``exit_code`` says how the CLI ends when this error reaches it.
    """

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        """The one line an operator sees: the message, then the hint if there is one."""
        return f"{self.message}; hint: {self.hint}" if self.hint else self.message


class UsageError(HsTxError):
    """A bad command line, configuration, module definition or refused request."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """The configuration file is unreadable or has a bad key or value."""


class ModuleDefinitionError(UsageError):
    """An enabled module's index.json is malformed or declares something unusable."""


class ScopeError(UsageError):
    """A path cannot be part of a transaction's scope (mount point, state dir, ...)."""


class NoSpaceError(UsageError):
    """Too little free space to snapshot the scope; nothing was changed."""


class LockedError(HsTxError):
    """Another hs-tx process holds the lock."""

    exit_code = EXIT_LOCKED


class RunFailed(HsTxError):
    """The run failed and the system is as it was before (rolled back or aborted)."""

    exit_code = EXIT_FAILED


class DamagedError(HsTxError):
    """The system or the data needed to repair it is damaged (rollback failed, ...)."""

    exit_code = EXIT_DAMAGED


class Interrupted(HsTxError):
    """hs-tx received SIGINT, SIGTERM or SIGHUP while a transaction was running."""

    def __init__(self, signum: int) -> None:
        import signal

        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name}")
        self.signum = signum


def exit_code_for(error: BaseException) -> int:
    """Given any exception, return the process exit code hs-tx ends with."""
    if isinstance(error, HsTxError):
        return error.exit_code
    return EXIT_DAMAGED
