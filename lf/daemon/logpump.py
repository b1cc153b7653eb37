"""The log pump: a daemon's stdout and stderr reach its log through a pipe and this small process, which
appends them and rotates the log at a size limit, so a log never grows without bound and no line is lost.

lf runs this file as `python -I -S logpump.py LOG MAX_BYTES BACKUPS STATUS_FD GO_FD -- ARGV...` as the
leader of the daemon's new session (lf's side of it is `Launcher`). It forks: the child becomes the pump,
the parent execs ARGV, so the engine keeps the pid lf recorded, leads the process group and has the pump
as its child (`stop` signals the group and waits for every descendant, the pump included).

The engine runs only once a record names it. The launcher reports `pump PID` on STATUS_FD, then waits
for `go` on GO_FD; lf writes the record (the pid is the launcher's own, which the exec keeps) and only
then sends `go`. Should lf die before that (SIGKILL, the OOM killer, a stop timeout), GO_FD reads end of
file and the launcher exits without running ARGV: no instant of a start leaves an engine nobody knows
of. After `go` it execs ARGV, which closes STATUS_FD (lf reads end of file: the engine runs), or reports
`exec ERRNO MESSAGE` when ARGV cannot be run.

The pump ignores SIGINT, SIGTERM and SIGHUP and exits when the pipe reports end of file, that is once the
engine and everything it started have exited: `stop` needs no SIGKILL for it and the last lines a daemon
prints while shutting down are kept. A write that fails (disk full, a read-only remount, a symlink put in
the log's place) costs those bytes, never the pump: it says how many bytes were lost in the log as soon as
it can write again. The engine runs with SIGPIPE ignored, so should the pump die anyway (SIGKILL, the
OOM killer), the engine's log writes fail with EPIPE and it goes on serving instead of being killed by
the signal at its next log line.

Only the standard library, and nothing imported before the exec that the engine's start would wait for.
"""

from __future__ import annotations

import os
import sys

DEFAULT_MAX_BYTES = 5 * 1024 * 1024
DEFAULT_BACKUPS = 3
LONG_LINE = 64 * 1024  # a line this much past the limit is cut: the log stays bounded whatever a daemon prints
PATH = os.path.abspath(__file__)


def argv(log_path: str, max_bytes: int, backups: int, status_fd: int, go_fd: int, command: list[str]) -> list[str]:
    """The command line that runs `command` with its output pumped into `log_path`, once told to go."""
    # -I: no PYTHON* variables, no user site, not the script's dir on sys.path; -S: no site-packages
    return [
        *(sys.executable, "-I", "-S", PATH, log_path, str(max_bytes), str(backups), str(status_fd), str(go_fd)),
        *("--", *command),
    ]


def limits() -> tuple[int, int]:
    """(LF_LOG_MAX_BYTES, LF_LOG_BACKUPS) from the environment; ValueError naming the variable if invalid."""
    from lf.envvars import AppEnvVars

    values = []
    for name, default in ((AppEnvVars.LOG_MAX_BYTES, DEFAULT_MAX_BYTES), (AppEnvVars.LOG_BACKUPS, DEFAULT_BACKUPS)):
        text = os.environ.get(name, "").strip()
        try:
            value = int(text) if text else default
        except ValueError:
            value = -1
        if value < 0:
            raise ValueError(f"{name}={text!r}: expected a whole number, 0 or more")
        values.append(value)
    return values[0], values[1]


class Launcher:
    """lf's end of a launch. `spawn` runs the launcher, which forks the log pump and waits; `wait_ready` learns
    the pump's pid; `go` lets the engine run (the caller has written its record by then); `abandon` makes
    sure nothing of the launch is left running and reaps the launcher, whichever step it had reached.

    The status pipe is read with poll(2), never select(2): a gateway with a thousand connections open
    has descriptors past select's limit of 1024."""

    def __init__(self, proc, status_fd: int, go_fd: int):
        self.proc = proc
        self._status: int | None = status_fd
        self._go: int | None = go_fd
        self._said = b""
        self._ended = False  # the status pipe read end of file: the engine runs, or the launcher is gone
        self.went = False

    @classmethod
    def spawn(cls, log_path: str, max_bytes: int, backups: int, command: list[str], **popen) -> Launcher:
        """Run the launcher (subprocess.Popen's keywords in `popen`, but pass_fds and start_new_session) in a
        session of its own; it waits for `go`."""
        import subprocess

        status_read, status_write = os.pipe()
        go_read, go_write = os.pipe()
        try:
            proc = subprocess.Popen(
                argv(log_path, max_bytes, backups, status_write, go_read, command),
                pass_fds=(status_write, go_read),
                start_new_session=True,  # own session and process group: survives the terminal, stoppable as a group
                **popen,
            )
        except BaseException:
            os.close(status_read)
            os.close(go_write)
            raise
        finally:
            os.close(status_write)
            os.close(go_read)
        return cls(proc, status_read, go_write)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def pump_pid(self) -> int | None:
        return _parse_report(self._said)[0]

    @property
    def failure(self) -> str | None:
        """Why the engine could not be run (the exec's error), or None."""
        return _parse_report(self._said)[1]

    def wait_ready(self, timeout: float) -> int | None:
        """The pump's pid once the launcher waits for `go`; None when it exited or said nothing in `timeout` s."""
        self._read(timeout, until=b"\n")
        return self.pump_pid

    def go(self, timeout: float) -> bool:
        """Let the engine run; True once the exec happened (or failed: see `failure`) within `timeout` s."""
        if self._go is not None:
            try:
                os.write(self._go, b"go\n")
                self.went = True
            except BrokenPipeError:
                pass  # the launcher is gone: the status pipe says so
        self._close_go()
        return self._read(timeout)

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def abandon(self, timeout: float = 5.0) -> None:
        """Nothing of this launch runs any more, and the launcher is reaped. Before `go`, closing the go pipe
        is all it takes (the launcher exits, its pump with it); after, the engine's group is stopped."""
        import subprocess

        from lf.daemon.process import terminate_group

        self._close_go()
        if not self.went or self.failure is not None:  # no engine: the launcher is on its way out
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            terminate_group(self.proc.pid, min(timeout, 2.0))
        try:
            self.proc.wait(timeout)  # reaped: a launch that failed leaves no zombie behind
        except subprocess.TimeoutExpired:
            pass  # unkillable (uninterruptible sleep): subprocess reaps it later
        self.close()

    def close(self) -> None:
        self._close_go()
        if self._status is not None:
            fd, self._status = self._status, None
            os.close(fd)

    def _close_go(self) -> None:
        if self._go is not None:
            fd, self._go = self._go, None
            os.close(fd)

    def _read(self, timeout: float, until: bytes | None = None) -> bool:
        """Read the status pipe until `until` was said or end of file; False if neither came within `timeout` s."""
        import select
        import time

        fd = self._status
        if fd is None:
            return self._ended
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while not self._ended and (until is None or until not in self._said):
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(max(1, int(left * 1000))):
                return False
            chunk = os.read(fd, 4096)
            if chunk:
                self._said += chunk
            else:
                self._ended = True
        return True


def _parse_report(data: bytes) -> tuple[int | None, str | None]:
    pid = failure = None
    for line in data.decode("utf-8", "replace").splitlines():
        word, _, rest = line.partition(" ")
        if word == "pump" and rest.isdigit():
            pid = int(rest)
        elif word == "exec":
            failure = rest.partition(" ")[2] or rest
    return pid, failure


class Launched:
    """The launched daemon as the health wait sees it (the subprocess.Popen calls it uses): it counts as
    exited only once its log pump has written what it printed last (waited for up to `drain` s), so the log
    tail a failed start shows is complete."""

    def __init__(self, proc, pump_pid: int | None, pump_create_time: float | None, drain: float = 1.0):
        self.proc = proc
        self.pump_pid = pump_pid
        self.pump_create_time = pump_create_time
        self.drain = drain
        self._drained = pump_pid is None or pump_create_time is None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self):
        return self.proc.returncode

    def poll(self):
        code = self.proc.poll()
        if code is not None:
            self._wait_for_pump()
        return code

    def wait(self, timeout: float | None = None):
        code = self.proc.wait(timeout)
        self._wait_for_pump()
        return code

    def _wait_for_pump(self) -> None:
        pid, create_time = self.pump_pid, self.pump_create_time
        if self._drained or pid is None or create_time is None:
            return
        import time

        from lf.daemon.process import is_same_process

        self._drained = True
        deadline = time.monotonic() + self.drain
        while time.monotonic() < deadline and is_same_process(pid, create_time):
            time.sleep(0.005)

    def __getattr__(self, name: str):
        return getattr(self.proc, name)


class Pump:
    """Appends what it is fed to `path`; at `max_bytes` (0: never) moves it to path.1 (path.1 to path.2, …,
    keeping `backups` of them; none: it starts over) and goes on in a new file, at a line boundary."""

    def __init__(self, path: str, max_bytes: int, backups: int):
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.fd: int | None = None
        self.size = 0
        self.at_line_start = True
        self.rotate_at = max_bytes  # moved on when a rotation fails, so a read-only dir is not retried per line
        self.lost = 0
        self.why = ""

    def _open(self) -> None:
        import stat

        fd = os.open(
            self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600
        )  # read: its last byte
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            os.close(fd)
            raise OSError(f"{self.path} is not a regular file of ours")
        os.set_blocking(fd, True)
        self.fd, self.size = fd, info.st_size
        self.at_line_start = self.size == 0 or os.pread(fd, 1, self.size - 1) == b"\n"
        self.rotate_at = self.max_bytes

    def _close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def _write(self, data: bytes) -> None:
        """Write all of `data`, or count it as lost (and try the file afresh next time)."""
        try:
            if self.fd is None:
                self._open()
            if self.lost:
                note = f"--- lf: {self.lost} bytes of output were lost here ({self.why})\n".encode()
                if not self.at_line_start:
                    note = b"\n" + note
                self._write_all(note)
                self.lost = 0
            self._write_all(data)
        except OSError as exc:
            self.lost += len(data)
            self.why = exc.strerror or str(exc)
            self._close()

    def _write_all(self, data: bytes) -> None:
        fd = self.fd
        assert fd is not None  # opened by _write
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            self.size += written
            view = view[written:]
        self.at_line_start = data.endswith(b"\n")

    def rotate(self) -> None:
        path = self.path
        try:
            if self.backups:
                for n in range(self.backups - 1, 0, -1):
                    try:
                        os.replace(f"{path}.{n}", f"{path}.{n + 1}")
                    except FileNotFoundError:
                        pass
                os.replace(path, f"{path}.1")
            else:
                os.unlink(path)
        except OSError:
            self.rotate_at = self.size + self.max_bytes  # keep appending; try again after as much again
            return
        self._close()
        self.size, self.at_line_start, self.rotate_at = 0, True, self.max_bytes

    def feed(self, data: bytes) -> None:
        while data:
            if (
                self.max_bytes
                and self.size >= self.rotate_at
                and (self.at_line_start or self.size >= self.rotate_at + LONG_LINE)
            ):
                self.rotate()
            if not self.max_bytes or self.size + len(data) < self.rotate_at:
                self._write(data)
                return
            # this chunk reaches the limit: write through the end of the line that reaches it, rotate, go on
            room = max(self.rotate_at - self.size, 0)
            end = data.find(b"\n", max(room - 1, 0))
            cut = end + 1 if end >= 0 else len(data)
            self._write(data[:cut])
            data = data[cut:]

    def run(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except OSError:
                break
            if not data:
                break
            try:
                self.feed(data)
            except Exception as exc:  # noqa: BLE001 - whatever happens, keep draining the pipe
                self.lost += len(data)
                self.why = f"{type(exc).__name__}: {exc}"
        if self.lost:
            self._write(b"")
        self._close()


def _become_pump(read_end: int, log_path: str, max_bytes: int, backups: int) -> None:
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # the log fd lf gave the launcher: the pump writes only through its own opens
        os.dup2(devnull, fd)
    os.close(devnull)
    try:
        import fcntl

        fcntl.fcntl(read_end, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)  # room for bursts (Linux)
    except (ImportError, OSError):
        pass
    try:
        Pump(log_path, max_bytes, backups).run(read_end)
    finally:
        os._exit(0)


def _told_to_go(go_fd: int) -> bool:
    """Wait for lf's `go`; False at end of file (lf gave up on the start, or died before recording it)."""
    said = b""
    while b"\n" not in said:
        chunk = os.read(go_fd, 64)
        if not chunk:
            return False
        said += chunk
    return said.startswith(b"go\n")


def main(args: list[str]) -> None:
    log_path, max_bytes, backups = args[0], int(args[1]), int(args[2])
    status_fd, go_fd = int(args[3]), int(args[4])
    command = args[6:]
    read_end, write_end = os.pipe()
    here = os.open(".", os.O_RDONLY)
    os.chdir("/")  # the pump works from / from its first instant (the log path is absolute); the engine from here
    pid = os.fork()
    if pid == 0:
        os.close(here)
        os.close(write_end)
        os.close(status_fd)
        os.close(go_fd)
        _become_pump(read_end, log_path, max_bytes, backups)
    os.fchdir(here)
    os.close(here)
    os.close(read_end)
    try:
        os.write(status_fd, f"pump {pid}\n".encode())
        go = _told_to_go(go_fd)
    except OSError:  # lf is gone already
        go = False
    if not go:
        # no record names this launch: the engine must never run (the pump sees end of file and exits)
        try:
            os.write(write_end, b"--- lf: the start was abandoned before the engine ran\n")
        except OSError:
            pass
        os._exit(0)
    os.close(go_fd)
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)
    os.set_inheritable(status_fd, False)  # closed by the exec: lf reads end of file
    import signal

    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # inherited by the engine: see the module's docstring
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # as subprocess restores it
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        os.write(status_fd, f"exec {exc.errno} {exc.strerror or exc}\n".encode())
        os._exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
