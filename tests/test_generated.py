"""Files generated from the app stay true to it, and completion works in a real bash."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import generate  # noqa: E402


@pytest.mark.parametrize("target", ["completions", "docs", "schema", "readme"])
def test_committed_copies_are_fresh(target):
    for path, text in generate.generate(target).items():
        assert path.exists(), f"{path} is missing: run `python scripts/generate.py {target}`"
        assert path.read_text() == text, f"{path} is stale: run `python scripts/generate.py {target}`"


def _complete_in_bash(words: list[str], tmp_path) -> list[str]:
    bin_dir = Path(sys.executable).parent
    script = f"""
source {REPO / "completions" / "lf.bash"}
COMP_WORDS=({" ".join(repr(w) if w else '""' for w in words)})
COMP_CWORD={len(words) - 1}
_lf_completion lf
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completes_runtimes_instances_and_models(tmp_path):
    shutil.copy(REPO / "tests" / "fixtures" / "configs" / "list_two_llamacpp.yaml", "llamafarm.yaml")
    assert shutil.which("lf", path=str(Path(sys.executable).parent)), "lf must be installed in the test venv"
    starts = _complete_in_bash(["lf", "runtime", "start", ""], tmp_path)
    assert {"llamacpp", "alpha", "beta"} <= set(starts)
    models = _complete_in_bash(["lf", "chat", "--model", ""], tmp_path)
    assert {"alpha", "beta", "smollm2-135m"} <= set(models)
    assert _complete_in_bash(["lf", "runtime", "sta"], tmp_path) == ["start", "status"]
    # start offers only what start accepts: not the servers lf does not run
    assert not {"ollama", "openai", "universal"} & set(starts)
    assert {"ollama", "openai"} <= set(_complete_in_bash(["lf", "runtime", "status", ""], tmp_path))


@pytest.mark.parametrize(
    "shell, files",
    [
        ("bash", [".bash_completions/lf.sh", ".bashrc"]),
        ("zsh", [".zfunc/_lf", ".zshrc"]),
        ("fish", [".config/fish/completions/lf.fish"]),
    ],
)
def test_install_completion_installs_for_the_shell_asked_for(tmp_path, shell, files):
    env = {**os.environ, "HOME": str(tmp_path), "SHELL": "/bin/bash"}  # asked for, not the login shell's
    for _ in range(2):  # twice: the rc file gets its lines once
        result = subprocess.run(
            [sys.executable, "-m", "lf", "--install-completion", shell],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
    script = (tmp_path / files[0]).read_text()
    assert script == (REPO / "completions" / {"bash": "lf.bash", "zsh": "lf.zsh", "fish": "lf.fish"}[shell]).read_text()
    others = {".bash_completions", ".zfunc", ".config"} - {files[0].split("/")[0]}
    assert not any((tmp_path / o).exists() for o in others)  # nothing installed for another shell
    if len(files) > 1:
        rc = (tmp_path / files[1]).read_text().splitlines()
        assert len(rc) == len(set(rc))
    bad = subprocess.run(
        [sys.executable, "-m", "lf", "--install-completion", "tcsh"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert bad.returncode == 2 and "bash, zsh, fish" in bad.stderr


def test_completion_path_imports_nothing_heavy():
    code = (
        "import os, sys; os.environ.update(_LF_COMPLETE='complete_bash', COMP_WORDS='lf runtime stop ', COMP_CWORD='3');"
        "from lf.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('httpx', 'psutil', 'pydantic') if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy), file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert "HEAVY=\n" in result.stderr or result.stderr.rstrip().endswith("HEAVY="), result.stderr
