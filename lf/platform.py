"""What this operating system offers lf: the one place that knows how Linux, macOS and Windows differ.

lf is built and tested on Linux. macOS has every POSIX facility lf's daemons use (sessions, process groups,
SIGHUP/SIGKILL/SIGCONT, fork, flock, O_NOFOLLOW, owners and modes). Windows has none of them: there lf runs the
commands that need no daemon, and a start says that it is not supported yet (docs/platforms-windows.md designs
the daemon layer for it). Decisions are taken on the facilities themselves (does `signal` have SIGHUP?), not on
the platform's name, so a test can take them away from a Linux interpreter and see what a Windows user sees.
"""

from __future__ import annotations

import os
import signal
import sys

from lf.errors import ExitStatus, LfError

# What the daemon layer (lf.daemon: supervisor, process, logpump) cannot do without, as (module, name); a
# name of None: the module itself. All of them exist on Linux and macOS; none on Windows.
DAEMON_FACILITIES: tuple[tuple[str, str | None], ...] = (
    ("os", "fork"),  # the log pump forks before the engine is exec'd
    ("os", "setsid"),  # a daemon runs in a session of its own: it outlives the terminal
    ("os", "getsid"),  # which processes belong to an instance
    ("os", "killpg"),  # stop signals the whole process group
    ("signal", "SIGHUP"),
    ("signal", "SIGKILL"),  # after the stop timeout
    ("signal", "SIGCONT"),  # a frozen (SIGSTOPped) process must run to act on SIGTERM
    ("fcntl", None),  # the log pump's pipe size; flock
)


def name() -> str:
    """The platform as people call it."""
    if sys.platform == "darwin":
        return "macOS"
    if sys.platform == "win32":
        return "Windows"
    if sys.platform.startswith("linux"):
        return "Linux"
    return sys.platform


# -- signals ---------------------------------------------------------------------------------------------
def termination_signals() -> tuple[int, ...]:
    """The signals lf treats as Ctrl-C (stop what is half done, then exit 128+N): SIGTERM, and SIGHUP (a closed
    terminal) where the platform has it."""
    return tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


def hangup_signal() -> int | None:
    return getattr(signal, "SIGHUP", None)


# -- files -----------------------------------------------------------------------------------------------
def open_flag(flag: str) -> int:
    """An os.O_* flag, or 0 where the platform has none (O_NOFOLLOW, O_NONBLOCK: not on Windows; O_BINARY: only
    there, where a descriptor is otherwise opened in text mode)."""
    value = getattr(os, flag, 0)
    return value if isinstance(value, int) else 0


def posix_owners() -> bool:
    """Do files have a POSIX owner and mode bits that mean what they say? Not on Windows: its st_uid is always
    0, its modes are made up from the read-only attribute, and a user's profile folder is private by its ACL."""
    return hasattr(os, "geteuid")


def owned_by_me(info: os.stat_result) -> bool:
    """Is the file `info` describes this user's? Always, where owners are not POSIX's (see posix_owners)."""
    return not posix_owners() or info.st_uid == os.geteuid()


def quote(path: object) -> str:
    """`path` as it must be typed in a command the user copies: quoted when it holds a space or another
    character the shell would take apart (macOS's `Application Support`); as it is otherwise."""
    text = str(path)
    if sys.platform == "win32":
        import subprocess

        return subprocess.list2cmdline([text])  # double quotes, as cmd.exe and PowerShell read them
    import shlex

    return shlex.quote(text)


# -- daemons ---------------------------------------------------------------------------------------------
def missing_for_daemons() -> list[str]:
    """The facilities of DAEMON_FACILITIES this interpreter lacks, by name ([]: daemons can run here)."""
    import importlib

    missing = []
    for module, attr in DAEMON_FACILITIES:
        try:
            found = importlib.import_module(module)
        except ImportError:
            missing.append(module)
            continue
        if attr is not None and not hasattr(found, attr):
            missing.append(f"{module}.{attr}")
    return missing


class DaemonsUnsupported(LfError):
    """lf cannot start daemons here (Windows): a start, a restart, `lf serve --detach`, or a chat that needs one."""

    exit_status = ExitStatus.START_FAILED


def require_daemons(what: str = "starting runtime daemons") -> None:
    """DaemonsUnsupported when this platform lacks what lf's daemons need; nothing otherwise."""
    missing = missing_for_daemons()
    if missing:
        raise DaemonsUnsupported(
            f"{what} is not supported on this platform yet ({name()}: no {', '.join(missing)})",
            hint="run the server yourself and give its model entry in llamafarm.yaml a base_url: lf then chats "
            "with it without starting anything (every command that needs no daemon works here: config, doctor, "
            "models info, chat, status). The daemon layer for this platform: docs/platforms-windows.md",
        )
