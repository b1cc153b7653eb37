"""macOS, simulated on Linux: each way macOS differs that lf depends on, taken into this interpreter (a readline
without append_history_file, a psutil without memory_maps, sockets only root may list, sysctl's answers for
Apple silicon, platformdirs' single folder) and what lf does with it. tests/data/hardware/README.md says where
the recorded outputs come from. Windows: tests/test_platforms_windows.py."""

from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from lf import dirs, files, hardware
from lf.daemon import process, supervisor
from lf.errors import LfError, StartError

DATA = Path(__file__).parent / "data" / "hardware"
ROOT = Path(__file__).resolve().parent.parent
GiB = 1024**3
SCRIPT = ROOT / "scripts" / "ensure-browser"


# -- interactive chat where readline is libedit ---------------------------------------------------------------
class Libedit(types.ModuleType):
    """Python's readline module as it is where it wraps libedit (macOS's own Python): no append_history_file, and
    read_history_file refuses a file without libedit's header line (EINVAL), as GNU readline's files have none."""

    backend = "editline"

    def __init__(self):
        super().__init__("readline")
        self.history: list[str] = []

    def set_auto_history(self, enabled: bool) -> None:
        pass

    def set_history_length(self, length: int) -> None:
        pass

    def add_history(self, line: str) -> None:
        self.history.append(line)

    def get_line_buffer(self) -> str:
        return ""

    def read_history_file(self, path: str) -> None:
        with open(path, "rb") as fh:
            if fh.readline().rstrip(b"\n") != b"_HiStOrY_V2_":
                raise OSError(errno.EINVAL, "Invalid argument")
            self.history += [line.decode().replace("\\040", " ") for line in fh.read().splitlines()]

    def write_history_file(self, path: str) -> None:
        with open(path, "w") as fh:
            fh.write("_HiStOrY_V2_\n" + "".join(line.replace(" ", "\\040") + "\n" for line in self.history))


def _reader(monkeypatch, readline: types.ModuleType):
    monkeypatch.setitem(sys.modules, "readline", readline)
    from lf.cli.chat import _LineReader

    return _LineReader()


def test_chat_keeps_its_history_where_readline_has_no_append_history_file(monkeypatch, isolated):
    readline = Libedit()
    assert not hasattr(readline, "append_history_file")
    reader = _reader(monkeypatch, readline)
    assert reader.history_file == isolated / "state" / "chat_history"
    reader.remember("What is two plus two?")
    reader.remember("What is two plus two?")  # a repeat is kept once
    reader.remember("And three plus three?")
    assert readline.history == ["What is two plus two?", "And three plus three?"]
    assert reader.history_file.read_text().splitlines() == ["What is two plus two?", "And three plus three?"]
    assert reader.history_file.stat().st_mode & 0o777 == 0o600

    again = Libedit()
    _reader(monkeypatch, again)  # the next session recalls them
    assert again.history == ["What is two plus two?", "And three plus three?"]


def test_a_history_gnu_readline_wrote_loads_where_readline_is_libedit(monkeypatch, isolated):
    history = isolated / "state" / "chat_history"
    history.parent.mkdir(mode=0o700)
    history.write_text("an older line\nWhat is two plus two?\n")  # as GNU readline writes it: no header
    readline = Libedit()
    reader = _reader(monkeypatch, readline)
    assert reader.history_file == history, "the history was given up"
    assert readline.history == ["an older line", "What is two plus two?"]


def test_a_history_libedit_wrote_is_read_and_rewritten_plain(monkeypatch, isolated):
    history = isolated / "state" / "chat_history"
    history.parent.mkdir(mode=0o700)
    history.write_bytes(b"_HiStOrY_V2_\nWhat\\040is\\040two\\040plus\\040two?\nna\\M-C\\M-/ve\\040caf\\M-C\\M-)\n")
    gnu = SimpleNamespace(set_auto_history=lambda enabled: None, history=[])
    gnu.add_history = gnu.history.append
    reader = _reader(monkeypatch, gnu)  # a GNU readline Python now reads what a libedit one wrote
    assert gnu.history == ["What is two plus two?", "naïve café"]
    assert history.read_text(encoding="utf-8").splitlines() == ["What is two plus two?", "naïve café"]
    assert reader.history_file == history


def test_libedit_escapes_are_decoded():
    from lf.cli.chat import _unvis

    assert _unvis(rb"a\040b\\c\^C\M-C\M-)\M^?\s\t") == b"a b\\c\x03\xc3\xa9\xff \t"
    assert _unvis(b"no escapes") == b"no escapes"


# -- stopping an instance where psutil has no memory_maps -------------------------------------------------------
HOLDER = """
import ctypes, mmap, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
fd = os.open(sys.argv[1], os.O_RDWR)
assert libc.mmap(None, 4096, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0) not in (None, 2**64 - 1)
os.close(fd)  # only mapped now, as vLLM's shared memory is (Python's own mmap would keep a descriptor)
held = open(sys.argv[2], "w")  # only open
print("ready", flush=True)
time.sleep(60)
"""


def test_an_instances_leftover_files_are_found_with_and_without_memory_maps(tmp_path, monkeypatch):
    mapped, held = tmp_path / "psm_mapped", tmp_path / "psm_open"
    mapped.write_bytes(b"\0" * 4096)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(mapped), str(held)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        pattern = str(tmp_path / "psm_*")
        assert supervisor.held_files(proc.pid, [pattern]) == [str(mapped), str(held)]  # Linux: both
        monkeypatch.delattr(psutil.Process, "memory_maps")  # macOS's psutil has none
        assert supervisor.held_files(proc.pid, [pattern]) == [str(held)]  # what can be known, and no crash
    finally:
        proc.kill()
        proc.wait()


# -- psutil: the version lf needs, and sockets only root may list -----------------------------------------------
def test_the_psutil_lower_bound_has_process_net_connections():
    from packaging.requirements import Requirement

    text = (ROOT / "pyproject.toml").read_text()
    (spec,) = re.findall(r'"(psutil[^"]*)"', text)
    allowed = Requirement(spec).specifier
    # the premise: lf asks a Process for its sockets, which psutil has done since 6.0 (5.x: Process.connections)
    assert "proc.net_connections(" in (ROOT / "lf" / "daemon" / "process.py").read_text()
    assert "6.0.0" in allowed and not any(v in allowed for v in ("5.9.0", "5.9.8")), spec


def test_who_holds_a_port_is_found_where_only_root_may_list_every_socket(monkeypatch):
    def denied(*args, **kwargs):
        raise psutil.AccessDenied()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        monkeypatch.setattr(psutil, "net_connections", denied)  # macOS, not root
        owner, pid = process.port_owner(port)
    assert pid == os.getpid() and owner.startswith(f"pid {os.getpid()} ("), owner


# -- Apple silicon: cores, memory, Metal ------------------------------------------------------------------------
def read(name: str) -> str:
    return (DATA / name).read_text()


def test_sysctl_of_apple_silicon_and_of_an_intel_mac():
    m1 = hardware.cpu_from_sysctl(hardware.parse_sysctl(read("sysctl-apple-m1.txt")))
    assert (m1.model, m1.logical, m1.physical, m1.performance) == ("Apple M1", 8, 8, 4)
    assert {"neon", "feat_dotprod"} <= m1.flags and not m1.avx2
    pro = hardware.cpu_from_sysctl(hardware.parse_sysctl(read("sysctl-apple-m1-pro.txt")))
    assert (pro.model, pro.logical, pro.physical, pro.performance) == ("Apple M1 Pro", 10, 10, 8)
    intel = hardware.cpu_from_sysctl(hardware.parse_sysctl(read("sysctl-intel-mac.txt")))
    assert intel.model == "Intel(R) Core(TM) i7-8750H CPU @ 2.20GHz"
    assert (intel.logical, intel.physical, intel.performance) == (12, 6, None)  # one kind of core
    assert intel.avx2 and not intel.avx512 and {"sse2", "sse4_2", "avx", "fma"} <= intel.flags


@pytest.fixture
def mac(tmp_path, monkeypatch):
    """This interpreter as a Mac's: sys.platform darwin (in lf.hardware), arm64, and a `sysctl` on PATH that
    answers from a recorded output (set `mac(name, wired_limit_mb)`)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(hardware, "sys", SimpleNamespace(platform="darwin"))
    import platform

    monkeypatch.setattr(platform, "machine", lambda: "arm64")

    def use(name: str, wired_limit_mb: int = 0, machine: str = "arm64") -> None:
        monkeypatch.setattr(platform, "machine", lambda: machine)
        sysctl = bin_dir / "sysctl"
        sysctl.write_text(f'#!/bin/sh\nif [ "$1" = -n ]; then echo {wired_limit_mb}; else cat {DATA / name}; fi\n')
        sysctl.chmod(0o755)
        hardware.sysctl_facts.cache_clear()
        hardware.accelerators.cache_clear()

    yield use
    hardware.sysctl_facts.cache_clear()
    hardware.accelerators.cache_clear()


def test_the_threads_default_on_apple_silicon_is_its_performance_cores(mac, monkeypatch):
    mac("sysctl-apple-m1-pro.txt")
    monkeypatch.setattr(hardware, "usable_cpus", lambda: 10)  # macOS has no affinity mask: every CPU
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 10)
    assert hardware.cpu_info().model == "Apple M1 Pro"  # not "arm" (platform.processor())
    assert hardware.physical_cores() == 8, "efficiency cores would hold the engine's threads back"
    assert hardware.threads_rule() == "one per performance core"
    from lf.runtimes.launch import hardware_defaults
    from lf.runtimes.registry import get_runtime

    assert hardware_defaults(get_runtime("llamacpp")) == {"threads": 8, "gpu_layers": -1}  # Metal found


def test_an_intel_mac_keeps_one_thread_per_physical_core(mac, monkeypatch):
    mac("sysctl-intel-mac.txt", machine="x86_64")
    monkeypatch.setattr(hardware, "usable_cpus", lambda: 12)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 12 if logical else 6)
    assert hardware.physical_cores() == 6 and hardware.threads_rule() == "one per physical core"
    assert hardware.apple_metal() == [] and hardware.gpu_memory_limit() is None  # its xllamacpp has no Metal


def test_metal_working_set_by_macos_default_and_by_iogpu_wired_limit():
    small = hardware.metal_working_set(16 * GiB, None)
    assert small.bytes == int(16 * GiB * 2 / 3) and small.source.startswith("macOS's default, about 2/3 of 16 GiB")
    assert hardware.metal_working_set(64 * GiB, 0).bytes == 48 * GiB
    raised = hardware.metal_working_set(16 * GiB, 12288)
    assert (raised.bytes, raised.source) == (12 * GiB, "iogpu.wired_limit_mb = 12288")


def test_metal_limit_of_a_simulated_apple_silicon_mac(mac):
    mac("sysctl-apple-m1.txt")
    (gpu,) = hardware.apple_metal()
    assert (gpu.name, gpu.backend) == ("Apple M1 GPU (Metal)", "metal")
    limit = hardware.gpu_memory_limit(-1)
    assert limit is not None and limit.bytes == int(16 * GiB * 2 / 3)  # hw.memsize, not this machine's memory
    assert hardware.gpu_memory_limit(0) is None  # nothing offloaded: Metal holds nothing
    mac("sysctl-apple-m1.txt", wired_limit_mb=14336)
    assert hardware.gpu_memory_limit().bytes == 14 * GiB


def _spec(tmp_path, gpu_layers):
    from lf.config.names import default_entry
    from lf.core.targets import Overrides, build_spec

    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    spec = build_spec(default_entry("llamacpp"), None, Overrides(model=str(model)), single=True)
    return replace(spec, settings={**spec.settings, "gpu_layers": gpu_layers})


def _needs(total: int):
    from lf.models.memory import Estimate

    return Estimate(total, total - GiB, 0, GiB // 2, GiB // 4, 0, GiB // 4, 4096, 1, "f16", "f16", 4096, None)


def test_a_start_that_fits_memory_but_not_metals_working_set_is_refused(tmp_path, monkeypatch):
    from lf.core.actions import require_memory

    monkeypatch.setattr(hardware, "memory", lambda: hardware.Memory(total=16 * GiB, available=14 * GiB))
    limit = hardware.GpuMemoryLimit(int(16 * GiB * 2 / 3), "macOS's default, about 2/3 of 16 GiB of unified memory")
    monkeypatch.setattr(hardware, "gpu_memory_limit", lambda gpu_layers=None: None if gpu_layers == 0 else limit)
    with pytest.raises(StartError) as refused:
        require_memory(_spec(tmp_path, -1), _needs(12 * GiB))
    assert "Metal may hold 10.7 GiB (macOS's default" in refused.value.message, refused.value.message
    assert "gpu_layers" in refused.value.hint and "iogpu.wired_limit_mb" in refused.value.hint
    assert "--force" in refused.value.hint and refused.value.exit_status == 7
    require_memory(_spec(tmp_path, 0), _needs(12 * GiB))  # on the CPU only: RAM is the limit, and it fits
    require_memory(_spec(tmp_path, -1), _needs(8 * GiB))  # within Metal's working set


# -- platformdirs' one folder for state and data --------------------------------------------------------------
@pytest.fixture
def one_folder(tmp_path, monkeypatch):
    """platformdirs as on macOS: the same folder for state and data, with a space in its path."""
    import platformdirs

    folder = tmp_path / "Library" / "Application Support" / "lf"
    monkeypatch.delenv("LF_STATE_DIR")
    monkeypatch.delenv("LF_DATA_DIR")
    monkeypatch.setattr(platformdirs, "user_state_dir", lambda *a, **k: str(folder))
    monkeypatch.setattr(platformdirs, "user_data_dir", lambda *a, **k: str(folder))
    monkeypatch.setattr(dirs.sys, "platform", "darwin")  # on Linux lf computes the XDG dirs without platformdirs
    return folder


def test_state_and_data_dirs_differ_where_platformdirs_gives_one_folder(one_folder):
    assert dirs.data_dir() == one_folder
    assert dirs.state_dir() == one_folder / "state"
    assert dirs.env_var_for(dirs.state_dir() / "instances" / "llamacpp.json") == "LF_STATE_DIR"
    assert dirs.env_var_for(dirs.data_dir() / "models" / "m.gguf") == "LF_DATA_DIR"


def test_hints_name_the_right_variable_and_quote_a_path_with_a_space(one_folder):
    record = dirs.state_dir() / "instances" / "llamacpp.json"
    hint = dirs.fix_hint(record, OSError(errno.EACCES, "Permission denied"))
    assert f"fix the permissions of '{record.parent}'" in hint and "point LF_STATE_DIR at" in hint, hint
    link = files.write_error(record, OSError(errno.ELOOP, "Too many levels of symbolic links"))
    assert f"rm '{record}'" in link.hint and f"write to '{record.parent}'" in link.hint, link.hint


def test_a_private_dir_hint_quotes_a_path_with_a_space(tmp_path, monkeypatch):
    folder = tmp_path / "Application Support"
    folder.mkdir(mode=0o755)

    def refuse(self, mode):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(Path, "chmod", refuse)  # a dir of ours lf cannot tighten (an ACL, a foreign mount)
    with pytest.raises(LfError) as refused:
        dirs.ensure_private_dir(folder)
    assert f"chmod 0700 '{folder}'" in refused.value.hint, refused.value.hint


# -- make test on a Mac: the browser ----------------------------------------------------------------------------
def _ensure_browser(tmp_path, uname: str, uid: int, tools: tuple[str, ...] = ()):
    """scripts/ensure-browser with a PATH holding only bash, and fakes of `uname`, `id` and `tools`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for name, out in (("uname", uname), ("id", str(uid)), *((tool, "") for tool in tools)):
        (bin_dir / name).write_text(f"#!/bin/sh\necho {out}\n" if out else "#!/bin/sh\nexit 0\n")
        (bin_dir / name).chmod(0o755)
    bash = subprocess.run(["sh", "-c", "command -v bash"], capture_output=True, text=True).stdout.strip()
    return subprocess.run([bash, str(SCRIPT)], capture_output=True, text=True, env={"PATH": str(bin_dir)}, timeout=30)


def test_ensure_browser_says_what_to_install_on_a_mac(tmp_path):
    done = _ensure_browser(tmp_path, "Darwin", 501, ("brew",))
    assert done.returncode == 1
    assert "brew install --cask chromium chromedriver" in done.stderr and "apt-get" not in done.stderr, done.stderr
    without_brew = _ensure_browser(tmp_path / "nobrew", "Darwin", 501)
    assert "Homebrew, then: brew install --cask chromium chromedriver" in without_brew.stderr


def test_ensure_browser_says_what_to_install_on_linux_without_root(tmp_path):
    debian = _ensure_browser(tmp_path / "debian", "Linux", 1000, ("apt-get",))
    assert debian.returncode == 1 and "sudo apt-get install chromium chromium-driver" in debian.stderr
    fedora = _ensure_browser(tmp_path / "fedora", "Linux", 1000, ("dnf",))
    assert fedora.returncode == 1 and "sudo dnf install chromium chromedriver" in fedora.stderr


def test_ensure_browser_is_content_with_a_browser_on_path(tmp_path):
    done = _ensure_browser(tmp_path, "Darwin", 501, ("chromium", "chromedriver"))
    assert (done.returncode, done.stderr) == (0, "")
