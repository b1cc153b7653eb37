"""`lf models pull` and Hugging Face references in llamafarm.yaml, against a local fake Hub (tests/fakes/hfhub.py)
reached by the real huggingface_hub through HF_ENDPOINT. Nothing here reaches the internet: HF_ENDPOINT
always names a local port."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import sys
from pathlib import Path

import pytest
from conftest import default_model_installed, run_lf

from fakes.hfhub import FakeHub, HubFile, write_gguf

REPO = "org/Tiny-GGUF"
MB = 1024 * 1024
QUESTION = "What is the capital of France? Answer in one sentence."


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def hf_env(isolated, monkeypatch):
    """A private HF cache, no token, online, and an endpoint where nothing listens until a test sets its hub."""
    monkeypatch.setenv("HF_HOME", str(isolated / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "TRANSFORMERS_OFFLINE", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    from huggingface_hub import constants  # read once, at its import: this process resolves in the test's cache too

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(isolated / "hf" / "hub"))
    return isolated / "hf" / "hub"


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ggufs")
    return {
        "small": write_gguf(folder / "small.gguf", "small", padding=4096).read_bytes(),
        "other": write_gguf(folder / "other.gguf", "other", padding=8192).read_bytes(),
        "big": write_gguf(folder / "big.gguf", "big", padding=25 * MB),  # over huggingface_hub's 10 MB write chunk
    }


@pytest.fixture
def hub(monkeypatch, ggufs):
    fake = FakeHub()
    fake.add(
        REPO, {"tiny-Q4_K_M.gguf": ggufs["small"], "tiny-Q8_0.gguf": ggufs["other"], "mmproj-tiny-F16.gguf": b"GGUF"}
    )
    with fake.start() as running:
        monkeypatch.setenv("HF_ENDPOINT", running.url)
        yield fake


def pull(*args: str, env: dict | None = None):
    return run_lf("models", "pull", *args, env=env)


def pull_json(*args: str, env: dict | None = None) -> dict:
    result = pull(*args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- references and selection (no network) -------------------------------------------------------------


def test_references_are_told_apart_from_paths_and_names():
    from lf.models.hub import HubRef, parse_ref

    assert parse_ref("unsloth/Qwen3-4B-GGUF:Q4_K_M") == HubRef("unsloth/Qwen3-4B-GGUF", quant="Q4_K_M")
    assert parse_ref("unsloth/Qwen3-4B-GGUF") == HubRef("unsloth/Qwen3-4B-GGUF")
    assert parse_ref("org/repo/sub/file-Q8_0.gguf") == HubRef("org/repo", filename="sub/file-Q8_0.gguf")
    for not_a_ref in (
        "smollm2-135m",
        "./models/x.gguf",
        "/abs/x.gguf",
        "~/x.gguf",
        "models/x.gguf",
        "a/../b",
        "llama3.2:1b",
    ):
        assert parse_ref(not_a_ref) is None, not_a_ref


def test_quant_selection_groups_split_files_and_names_the_choices():
    from lf.errors import ExitStatus, LfError
    from lf.models.hub import HubRef, gguf_models, select

    files = [
        "M-Q4_K_M-00002-of-00002.gguf",
        "M-Q4_K_M-00001-of-00002.gguf",
        "M-Q4_K.gguf",
        "M-UD-Q4_K_XL.gguf",
        "M-Q8_0.gguf",
        "mmproj-F16.gguf",
        "README.md",
    ]
    models = gguf_models(files, {f: 10 for f in files})
    assert [m.files for m in models if len(m.files) > 1] == [
        ("M-Q4_K_M-00001-of-00002.gguf", "M-Q4_K_M-00002-of-00002.gguf")
    ]
    assert not any("mmproj" in m.name for m in models)
    assert select(HubRef("o/r", quant="q4_k_m"), models).files == (
        "M-Q4_K_M-00001-of-00002.gguf",
        "M-Q4_K_M-00002-of-00002.gguf",
    )
    assert select(HubRef("o/r", quant="Q4_K"), models).name == "M-Q4_K.gguf"  # not Q4_K_M
    assert select(HubRef("o/r", quant="ud-q4_k_xl"), models).name == "M-UD-Q4_K_XL.gguf"
    with pytest.raises(LfError) as several:
        select(HubRef("o/r"), models)
    assert several.value.exit_status == ExitStatus.USAGE
    assert (
        "lf models pull o/r:Q4_K_M (20 B, 2 parts)" in several.value.hint
        and "lf models pull o/r:Q8_0" in several.value.hint
    )
    with pytest.raises(LfError) as missing:
        select(HubRef("o/r", quant="Q2_K"), models)
    assert missing.value.exit_status == ExitStatus.UNKNOWN and "o/r:Q8_0" in missing.value.hint


# --- pulling --------------------------------------------------------------------------------------------


def test_pull_each_reference_form_into_the_hf_cache(hub, hf_env, ggufs):
    by_quant = pull_json("org/Tiny-GGUF:q4_k_m")  # case-insensitive
    assert by_quant["repo"] == REPO and by_quant["quant"] == "Q4_K_M" and not by_quant["already_present"]
    assert [f["name"] for f in by_quant["files"]] == ["tiny-Q4_K_M.gguf"]
    path = Path(by_quant["path"])
    assert path.read_bytes() == ggufs["small"] and by_quant["size"] == len(ggufs["small"])
    assert path.is_relative_to(hf_env / "models--org--Tiny-GGUF" / "snapshots")
    assert by_quant["files"][0]["sha256"] == sha(ggufs["small"])
    # huggingface_hub itself finds it: the standard cache layout, shared with other tools
    from huggingface_hub import try_to_load_from_cache

    assert try_to_load_from_cache(REPO, "tiny-Q4_K_M.gguf", cache_dir=hf_env) == str(path)

    by_file = pull_json(f"{REPO}/tiny-Q8_0.gguf")
    assert Path(by_file["path"]).read_bytes() == ggufs["other"]

    again = pull_json("org/Tiny-GGUF:Q4_K_M")
    assert again["already_present"] and again["downloaded_bytes"] == 0 and again["path"] == str(path)
    assert hub.sent("tiny-Q4_K_M.gguf") == len(ggufs["small"])  # downloaded once

    plain = pull("org/Tiny-GGUF:Q4_K_M")
    assert plain.returncode == 0 and plain.stdout.strip() == f"org/Tiny-GGUF:Q4_K_M: {path}"
    assert "already present" in plain.stderr


def test_bare_repo_pulls_its_only_gguf_and_asks_when_there_are_several(hub, ggufs):
    hub.add("org/One-GGUF", {"one.Q5_K_S.gguf": ggufs["small"], "mmproj-one.gguf": b"GGUF"})
    assert pull_json("org/One-GGUF")["files"][0]["name"] == "one.Q5_K_S.gguf"

    several = pull(REPO)
    assert several.returncode == 2
    assert "holds 2 GGUF models" in several.stderr
    assert f"lf models pull {REPO}:Q4_K_M" in several.stderr and f"lf models pull {REPO}:Q8_0" in several.stderr
    assert not [r for r in hub.file_requests() if REPO in r.path]  # nothing downloaded before asking


def test_split_model_downloads_every_part_and_returns_the_first(hub, ggufs):
    parts = {f"big-Q4_K_M-0000{i}-of-00003.gguf": ggufs["small"] + bytes([i]) for i in (1, 2, 3)}
    hub.add("org/Split-GGUF", {**parts, "big-Q8_0.gguf": ggufs["other"]})
    data = pull_json("org/Split-GGUF:Q4_K_M")
    assert [f["name"] for f in data["files"]] == sorted(parts)
    assert Path(data["path"]).name == "big-Q4_K_M-00001-of-00003.gguf"
    for f in data["files"]:
        assert Path(f["path"]).parent == Path(data["path"]).parent  # side by side, where llama.cpp looks for them
        assert Path(f["path"]).read_bytes() == parts[f["name"]]
    assert data["size"] == sum(len(p) for p in parts.values())
    from lf.models.catalog import resolve_model_path

    assert resolve_model_path("org/Split-GGUF:q4_k_m") == Path(data["path"])


def test_an_interrupted_pull_continues_where_it_stopped(hub, hf_env, ggufs):
    big = ggufs["big"]
    size = big.stat().st_size
    hub.add("org/Big-GGUF", {"big-Q4_0.gguf": big})
    hub.drop_after["big-Q4_0.gguf"] = 15 * MB  # the connection drops, then the Hub answers 503

    first = pull("org/Big-GGUF:Q4_0")
    assert first.returncode == 9, first.stderr
    assert "stopped at" in first.stderr and "run the same command again" in first.stderr
    (partial,) = (hf_env / "models--org--Big-GGUF" / "blobs").glob("*.incomplete")
    kept = partial.stat().st_size
    assert 0 < kept < size
    sent_before = hub.sent("big-Q4_0.gguf")

    hub.heal()
    second = pull_json("org/Big-GGUF:Q4_0")
    sent_second = hub.sent("big-Q4_0.gguf") - sent_before
    assert sent_second == size - kept  # only the rest, not the whole file again
    assert second["files"][0]["resumed_from"] == kept and second["downloaded_bytes"] == size - kept
    assert any(r.range == f"bytes={kept}-" for r in hub.file_requests())
    assert sha(Path(second["path"]).read_bytes()) == sha(big.read_bytes())
    assert not list(partial.parent.glob("*.incomplete"))


def test_a_corrupt_download_is_refused_and_removed(hub, hf_env, ggufs):
    hub.add("org/Bad-GGUF", {"bad-Q4_0.gguf": HubFile(data=ggufs["small"], damaged=True)})
    result = pull("org/Bad-GGUF:Q4_0")
    assert result.returncode == 9
    assert "is corrupt" in result.stderr and sha(ggufs["small"]) in result.stderr
    repo_dir = hf_env / "models--org--Bad-GGUF"
    assert not [p for p in repo_dir.rglob("*") if p.is_file() and p.parent.name in ("blobs", "snapshots")]
    assert not list(repo_dir.rglob("*.gguf")) and not list(repo_dir.rglob("*.incomplete"))
    from lf.models.catalog import resolve_model_path
    from lf.models.hub import ModelNotPulledError

    with pytest.raises(ModelNotPulledError):
        resolve_model_path("org/Bad-GGUF:Q4_0")

    hub.repos["org/Bad-GGUF"].files["bad-Q4_0.gguf"].damaged = False  # a good copy next time
    assert Path(pull_json("org/Bad-GGUF:Q4_0")["path"]).read_bytes() == ggufs["small"]


@pytest.mark.parametrize(
    "ref, code, message, hint",
    [
        ("org/Missing", 4, "no model repository org/Missing", "HF_TOKEN"),
        ("org/Docs:Q4_K_M", 4, "holds no GGUF model file", "config.json"),
        (f"{REPO}:Q2_K", 4, "has no GGUF of quant Q2_K", f"lf models pull {REPO}:Q8_0"),
        (f"{REPO}/nope.gguf", 4, "has no file 'nope.gguf'", f"lf models pull {REPO}:Q4_K_M"),
        ("org/Twins-GGUF:Q4_K_M", 2, "is ambiguous", "lf models pull org/Twins-GGUF/b-Q4_K_M.gguf"),
        ("smollm2-135m", 2, "not a Hugging Face model reference", "lf models fetch"),
    ],
)
def test_errors_name_the_problem_with_their_exit_code(hub, ggufs, ref, code, message, hint):
    hub.add("org/Docs", {"config.json": b"{}", "model.safetensors": b"x"})
    hub.add("org/Twins-GGUF", {"a-Q4_K_M.gguf": ggufs["small"], "b-Q4_K_M.gguf": ggufs["other"]})
    result = pull(ref, "--json")
    assert result.returncode == code, result.stderr
    assert message in result.stderr and hint in result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["exit_code"] == code and message in error["message"]
    assert not hub.file_requests()


def test_disk_space_is_checked_before_downloading(hub, hf_env):
    import shutil

    from lf.models.hub import human_size

    hf_env.mkdir(parents=True)
    too_big = shutil.disk_usage(hf_env).free + 2**30  # a GiB more than the disk has
    hub.add("org/Huge-GGUF", {"huge-Q4_0.gguf": HubFile(data=b"GGUF", declared_size=too_big)})
    result = pull("org/Huge-GGUF:Q4_0")
    assert result.returncode == 1
    assert (
        "not enough disk space" in result.stderr
        and f"needs {human_size(too_big)}" in result.stderr
        and "HF_HOME" in result.stderr
    )
    assert not hub.file_requests()


def test_gated_repo_needs_a_token(hub, ggufs):
    hub.add("org/Gated-GGUF", {"g-Q4_0.gguf": ggufs["small"]}, gated=True)
    refused = pull("org/Gated-GGUF:Q4_0")
    assert refused.returncode == 9
    assert "gated model" in refused.stderr and "set HF_TOKEN" in refused.stderr
    assert not hub.sent("g-Q4_0.gguf")

    wrong = pull("org/Gated-GGUF:Q4_0", env={"HF_TOKEN": "hf_not_accepted"})
    assert wrong.returncode == 9 and "no access yet" in wrong.stderr

    allowed = pull("org/Gated-GGUF:Q4_0", "--json", env={"HF_TOKEN": hub.token})
    assert allowed.returncode == 0, allowed.stderr
    assert Path(json.loads(allowed.stdout)["path"]).read_bytes() == ggufs["small"]
    assert all(r.authorization == f"Bearer {hub.token}" for r in hub.file_requests() if r.status == 200)


def test_no_network(hf_env):
    result = pull("org/Tiny-GGUF:Q4_K_M", "--json")  # HF_ENDPOINT: a port where nothing listens
    assert result.returncode == 9
    assert "cannot reach the Hugging Face Hub at http://127.0.0.1:" in result.stderr
    assert json.loads(result.stdout)["error"]["exit_code"] == 9


def test_offline_mode_uses_the_cache_and_never_the_network(hub, ggufs):
    offline = {"HF_HUB_OFFLINE": "1"}
    missing = pull(f"{REPO}:Q4_K_M", env=offline)
    assert missing.returncode == 9
    assert "HF_HUB_OFFLINE is set" in missing.stderr and "unset HF_HUB_OFFLINE" in missing.stderr
    assert not hub.requests

    path = pull_json(f"{REPO}:Q4_K_M")["path"]
    count = len(hub.requests)
    cached = pull(f"{REPO}:Q4_K_M", "--json", env=offline)
    assert cached.returncode == 0, cached.stderr
    data = json.loads(cached.stdout)
    assert data["already_present"] and data["offline"] and data["path"] == path
    assert "using the cached copy" in cached.stderr
    assert len(hub.requests) == count


def test_unreachable_hub_falls_back_to_the_cached_copy(hub, monkeypatch):
    path = pull_json(f"{REPO}:Q8_0")["path"]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    data = pull_json(f"{REPO}:Q8_0")
    assert data["path"] == path and data["already_present"] and data["offline"]


def test_progress_on_a_terminal_shows_bytes_rate_and_eta(monkeypatch):
    from lf.cli.models_pull import DownloadBar
    from lf.models.hub import DownloadProgress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    bar = DownloadBar()
    for done in (0, 10 * MB, 20 * MB):
        bar(DownloadProgress("m.gguf", done, 40 * MB))
    bar(DownloadProgress("m.gguf", 40 * MB, 40 * MB, finished=True))
    text = screen.getvalue()
    assert "Downloading m.gguf (41.9 MB)" in text
    assert "\r\033[K" in text and "/s" in text and "ETA" in text and " 50.0%" in text
    assert text.endswith("\n")


# --- llamafarm.yaml references --------------------------------------------------------------------------


def _config(folder: Path, model: str, port: int) -> Path:
    path = folder / "llamafarm.yaml"
    path.write_text(
        "version: v1\nname: hub-demo\nnamespace: default\nruntime:\n  models:\n"
        f"    - name: local\n      provider: llamacpp\n      model: {model}\n      provider_config: {{port: {port}}}\n"
    )
    return path


def test_a_missing_reference_names_the_pull_command_without_touching_the_network(hub, isolated, free_port):
    from test_cheap_path import imported, run_lf_reporting_modules

    _config(isolated / "work", f"{REPO}:Q4_K_M", free_port)
    proc, code, modules = run_lf_reporting_modules(isolated, "runtime", "start")
    assert code == 8, proc.stderr
    assert f"lf models pull {REPO}:Q4_K_M" in proc.stderr and "--pull" in proc.stderr
    assert not hub.requests
    assert not imported(modules, "huggingface_hub.hf_api") and not imported(modules, "huggingface_hub.file_download")

    chat = run_lf("chat", "hi", "--json")
    assert chat.returncode == 8 and f"lf models pull {REPO}:Q4_K_M" in chat.stderr
    assert json.loads(chat.stdout)["error"]["exit_code"] == 8
    assert not hub.requests


def test_resolution_finds_what_huggingface_hub_finds(hub, hf_env):
    from huggingface_hub import try_to_load_from_cache

    from lf.models.catalog import resolve_model_path

    pull_json(f"{REPO}:Q8_0")
    for ref in (f"{REPO}:Q8_0", f"{REPO}/tiny-Q8_0.gguf", f"{REPO}:q8_0"):
        assert str(resolve_model_path(ref)) == try_to_load_from_cache(REPO, "tiny-Q8_0.gguf", cache_dir=hf_env)


def test_status_and_help_do_not_import_huggingface_hub(isolated):
    from test_cheap_path import imported, run_lf_reporting_modules

    for args in (("runtime", "status", "--json"), ("--help",), ("models", "pull", "--help")):
        proc, code, modules = run_lf_reporting_modules(isolated, *args)
        assert code in (0, 3), proc.stderr
        assert not imported(modules, "huggingface_hub"), args


needs_model = pytest.mark.skipif(
    not default_model_installed(), reason="needs smollm2-135m (lf models fetch smollm2-135m)"
)
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"


@pytest.fixture
def smol_hub(hub):
    from lf.models.catalog import CATALOG

    hub.add(
        SMOL,
        {
            "SmolLM2-135M-Instruct.Q4_1.gguf": CATALOG["smollm2-135m"].path(),
            "SmolLM2-135M-Instruct.Q8_0.gguf": b"GGUF-not-used",
        },
    )
    return hub


@pytest.mark.e2e
@needs_model
def test_pull_then_chat_with_a_configured_reference(smol_hub, isolated, free_port):
    _config(isolated / "work", f"{SMOL}:Q4_1", free_port)
    pulled = pull_json(f"{SMOL}:q4_1")
    requests = len(smol_hub.requests)
    try:
        chat = run_lf("chat", QUESTION, "--temperature", "0", "--max-tokens", "48")
        assert chat.returncode == 0, chat.stderr
        assert "Paris" in chat.stdout
        status = json.loads(run_lf("runtime", "status", "--json").stdout)
        (inst,) = status["instances"]
        assert inst["state"] == "running" and inst["model"] == f"{SMOL}:Q4_1"
        record = json.loads(next((isolated / "state").rglob("local.json")).read_text())
        assert record["model_path"] == pulled["path"]
        assert len(smol_hub.requests) == requests  # the start path never asked the Hub
    finally:
        run_lf("runtime", "stop", "--all")


@pytest.mark.e2e
@needs_model
def test_start_with_pull_pulls_then_starts(smol_hub, isolated, free_port):
    _config(isolated / "work", f"{SMOL}:Q4_1", free_port)
    try:
        started = run_lf("runtime", "start", "--pull", "--json")
        assert started.returncode == 0, started.stderr
        assert f"Pulling {SMOL}:Q4_1 (--pull)" in started.stderr
        assert smol_hub.sent("SmolLM2-135M-Instruct.Q4_1.gguf") > 90 * MB
        (inst,) = json.loads(started.stdout)["started"]
        assert inst["model"] == f"{SMOL}:Q4_1" and inst["health"]["healthy"]
        chat = run_lf("chat", QUESTION, "--temperature", "0", "--max-tokens", "48")
        assert chat.returncode == 0 and "Paris" in chat.stdout
    finally:
        run_lf("runtime", "stop", "--all")


@pytest.mark.e2e
@needs_model
def test_chat_with_pull_pulls_starts_and_answers(smol_hub, isolated, free_port):
    _config(isolated / "work", f"{SMOL}/SmolLM2-135M-Instruct.Q4_1.gguf", free_port)
    try:
        chat = run_lf("chat", QUESTION, "--temperature", "0", "--max-tokens", "48", "--pull")
        assert chat.returncode == 0, chat.stderr
        assert "Paris" in chat.stdout and "Pulling" in chat.stderr
    finally:
        run_lf("runtime", "stop", "--all")


def test_the_gateway_does_not_pull_it_names_the_command(hub, isolated, free_port):
    from fakes import Gateway, free_ports

    (port,) = free_ports(1)
    _config(isolated / "work", f"{REPO}:Q4_K_M", port)
    with Gateway(isolated / "work", free_port) as gateway:
        import httpx

        body = {"model": "local", "messages": [{"role": "user", "content": "hi"}]}
        answer = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=60)
    assert answer.status_code == 503
    assert f"lf models pull {REPO}:Q4_K_M" in answer.json()["error"]["message"]
    assert not hub.requests


@pytest.mark.e2e
@needs_model
def test_the_gateway_pulls_on_the_first_request_when_its_pull_setting_allows(smol_hub, isolated, free_port):
    import httpx

    from fakes import Gateway, free_ports

    (port,) = free_ports(1)
    _config(isolated / "work", f"{SMOL}:Q4_1", port)
    with Gateway(isolated / "work", free_port, "--pull") as gateway:
        body = {
            "model": "local",
            "messages": [{"role": "user", "content": QUESTION}],
            "temperature": 0,
            "max_tokens": 48,
        }
        answer = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=600)
        assert answer.status_code == 200, answer.text
        assert "Paris" in answer.json()["choices"][0]["message"]["content"]
        assert smol_hub.sent("SmolLM2-135M-Instruct.Q4_1.gguf") > 90 * MB
        assert f"pulling {SMOL}:Q4_1 for local" in gateway.text()
