"""One error family and one table of exit codes (what each instance state exits with: lf.daemon.states)."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Every exit code `lf` uses. Documented in README.md ("Exit codes")."""

    OK = 0
    ERROR = 1  # anything else that went wrong, with a message
    USAGE = 2  # bad command-line usage (unknown option, missing argument)
    NOT_RUNNING = 3  # status: a requested runtime is not running (stopped, crashed, exited)
    UNKNOWN = 4  # unknown runtime, instance or model name
    CONFIG = 5  # llamafarm.yaml is missing, unreadable or invalid
    UNHEALTHY = 6  # status: running, but not (yet) answering healthily
    START_FAILED = 7  # the runtime exited or timed out before it became healthy
    NOT_INSTALLED = 8  # the runtime's engine or the model is not installed here
    REQUEST_FAILED = 9  # a chat or API request failed, or the runtime died mid-answer
    CHECK_FAILED = 10  # doctor: at least one check failed (each says how to fix it)
    INTERRUPTED = 130  # Ctrl-C


# When several instances are asked about, the most serious answer wins.
_SEVERITY = (ExitStatus.UNKNOWN, ExitStatus.NOT_RUNNING, ExitStatus.UNHEALTHY, ExitStatus.OK)


def worst(codes) -> ExitStatus:
    codes = set(codes)
    return next((code for code in _SEVERITY if code in codes), ExitStatus.OK)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled like Ctrl-C (a start stops what it launched, chat keeps what it
    printed), but exiting with the signal's own code (128 + its number)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def raise_terminated(signum: int, _frame=None) -> None:
    """A signal handler: SIGTERM/SIGHUP become Terminated, raised in the main thread."""
    raise Terminated(signum)


class LfError(Exception):
    """A failure the user can act on: a message, an optional hint, an exit code."""

    exit_status = ExitStatus.ERROR

    def __init__(self, message: str, hint: str | None = None, exit_status: ExitStatus | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_status is not None:
            self.exit_status = exit_status


class ConfigError(LfError):
    exit_status = ExitStatus.CONFIG


class UnknownNameError(LfError):
    exit_status = ExitStatus.UNKNOWN


class NotInstalledError(LfError):
    exit_status = ExitStatus.NOT_INSTALLED


class StartError(LfError):
    exit_status = ExitStatus.START_FAILED


class RequestError(LfError):
    exit_status = ExitStatus.REQUEST_FAILED
