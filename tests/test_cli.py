"""The CLI without engines: exit codes, JSON shapes, errors, and chat over a mocked HTTP API."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from pytest_httpx import IteratorStream

from lf.errors import ExitStatus

SSE_HEADERS = {"Content-Type": "text/event-stream"}
BASE = "http://127.0.0.1:9/v1"  # loopback, nothing listens: probes fail fast, httpx is mocked
CONFIG = f"""\
version: v1
name: p
namespace: default
runtime:
  models:
    - name: remote
      provider: openai
      model: gpt-test
      base_url: {BASE}
      api_key: ${{TEST_API_KEY}}
      model_api_parameters:
        temperature: 0.2
"""


def sse(*tokens: str, done: bool = True, finish: bool = True) -> list[bytes]:
    chunks = [
        f'data: {{"id":"c1","model":"gpt-test","choices":[{{"index":0,"delta":{{"content":{json.dumps(t)}}}}}]}}\n\n'.encode()
        for t in tokens
    ]
    if finish:
        chunks.append(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
    if done:
        chunks.append(b"data: [DONE]\n\n")
    return chunks


@pytest.fixture
def remote_project(monkeypatch):
    monkeypatch.setenv("TEST_API_KEY", "sk-test-secret")
    Path("llamafarm.yaml").write_text(CONFIG)


def test_version_and_help(cli):
    result = cli("--version")
    assert result.exit_code == 0 and result.stdout.startswith("lf ")
    assert cli("--help").exit_code == 0
    assert cli("runtime", "--help").exit_code == 0


def test_status_with_nothing_running_exits_3(cli):
    result = cli("runtime", "status", "--json")
    assert result.exit_code == ExitStatus.NOT_RUNNING
    data = json.loads(result.stdout)
    assert data["version"] == 1 and data["exit_code"] == 3
    (inst,) = data["instances"]
    assert inst["name"] == "llamacpp" and inst["state"] == "stopped" and inst["pid"] is None


def test_status_of_an_unknown_name_exits_4(cli):
    result = cli("runtime", "status", "nosuch", "--json")
    assert result.exit_code == ExitStatus.UNKNOWN
    assert json.loads(result.stdout)["unknown"] == ["nosuch"]
    assert "unknown runtime or instance 'nosuch'" in result.stderr


def test_stop_is_idempotent_and_needs_a_name(cli):
    result = cli("runtime", "stop", "llamacpp")
    assert result.exit_code == 0 and "not running" in result.stdout
    result = cli("runtime", "stop")
    assert result.exit_code == ExitStatus.USAGE and "--all" in result.stderr
    result = cli("runtime", "stop", "--all", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == {"stopped": []}
    result = cli("runtime", "stop", "llamacp")
    assert result.exit_code == ExitStatus.UNKNOWN and "did you mean 'llamacpp'" in result.stderr
    assert not (Path("..") / "state" / "locks" / "llamacp.lock").exists()  # nothing made for a typo


def test_unknown_runtime_on_start_suggests(cli):
    result = cli("runtime", "start", "llamacp")
    assert result.exit_code == ExitStatus.UNKNOWN
    assert "did you mean 'llamacpp'" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_names_cannot_escape_the_state_dir(cli):
    for name in ("../etc", "a/b", "..", ".hidden"):
        result = cli("runtime", "logs", name)
        assert result.exit_code == ExitStatus.UNKNOWN, name
        assert "invalid instance name" in result.stderr


def test_logs_of_an_unknown_instance(cli):
    result = cli("runtime", "logs", "llamacpp")
    assert result.exit_code == ExitStatus.UNKNOWN and "no log" in result.stderr


def test_runtime_list_json(cli):
    result = cli("runtime", "list", "--json")
    assert result.exit_code == 0
    runtimes = {r["name"]: r for r in json.loads(result.stdout)["runtimes"]}
    assert runtimes["llamacpp"]["default_port"] == 11634
    assert runtimes["llamacpp"]["available"] is True
    assert runtimes["openai"]["managed"] is False
    assert runtimes["vllm"]["install"]  # not installed here: says how


def test_missing_engine_says_how_to_install(cli):
    result = cli("runtime", "start", "vllm", "--model", "some/model")
    assert result.exit_code == ExitStatus.NOT_INSTALLED
    assert "lf runtime install vllm" in result.stderr


def test_models_list_json(cli):
    result = cli("models", "list", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert {"configured", "served", "known", "local"} <= set(data)
    assert data["known"][0]["name"] == "smollm2-135m"


def test_chat_streams_tokens_from_config(cli, remote_project, httpx_mock):
    httpx_mock.add_response(
        url=f"{BASE}/chat/completions", method="POST", headers=SSE_HEADERS, stream=IteratorStream(sse("Hel", "lo", "!"))
    )
    result = cli("chat", "hi", "--system", "be brief", "--max-tokens", "5")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "Hello!\n"
    request = httpx_mock.get_request()
    body = json.loads(request.content)
    assert body["model"] == "gpt-test" and body["stream"] is True and body["max_tokens"] == 5
    assert body["temperature"] == 0.2  # model_api_parameters from the config
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert request.headers["authorization"] == "Bearer sk-test-secret"


def test_chat_reads_stdin(cli, remote_project, httpx_mock):
    httpx_mock.add_response(
        url=f"{BASE}/chat/completions", method="POST", headers=SSE_HEADERS, stream=IteratorStream(sse("ok"))
    )
    result = cli("chat", input="Say hi\n")
    assert result.exit_code == 0 and result.stdout == "ok\n"
    assert json.loads(httpx_mock.get_request().content)["messages"][-1]["content"] == "Say hi"


def test_chat_json_prints_the_response_object(cli, remote_project, httpx_mock):
    response = {
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
    }
    httpx_mock.add_response(url=f"{BASE}/chat/completions", method="POST", json=response)
    result = cli("chat", "capital?", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == response
    assert json.loads(httpx_mock.get_request().content)["stream"] is False


def test_chat_no_stream(cli, remote_project, httpx_mock):
    response = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "whole"}, "finish_reason": "stop"}]
    }
    httpx_mock.add_response(url=f"{BASE}/chat/completions", method="POST", json=response)
    result = cli("chat", "q", "--no-stream")
    assert result.exit_code == 0 and result.stdout == "whole\n"


class BrokenStream(httpx.SyncByteStream):
    def __iter__(self):
        yield from sse("The cap", "ital is", done=False, finish=False)
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


def test_chat_keeps_text_when_the_stream_breaks(cli, remote_project, httpx_mock):
    httpx_mock.add_response(url=f"{BASE}/chat/completions", method="POST", headers=SSE_HEADERS, stream=BrokenStream())
    result = cli("chat", "q")
    assert result.exit_code == ExitStatus.REQUEST_FAILED
    assert result.stdout == "The capital is\n"
    assert "broke mid-answer" in result.stderr
    assert "sk-test-secret" not in result.stderr + result.stdout


def test_chat_stream_ending_without_finish_is_an_error(cli, remote_project, httpx_mock):
    httpx_mock.add_response(
        url=f"{BASE}/chat/completions",
        method="POST",
        headers=SSE_HEADERS,
        stream=IteratorStream(sse("par", done=False, finish=False)),
    )
    result = cli("chat", "q")
    assert result.exit_code == ExitStatus.REQUEST_FAILED
    assert result.stdout == "par\n" and "before the answer was complete" in result.stderr


def test_chat_http_errors_are_reported(cli, remote_project, httpx_mock):
    httpx_mock.add_response(
        url=f"{BASE}/chat/completions", method="POST", status_code=401, json={"error": {"message": "bad key"}}
    )
    result = cli("chat", "q")
    assert result.exit_code == ExitStatus.REQUEST_FAILED
    assert "HTTP 401" in result.stderr and "bad key" in result.stderr and "api_key" in result.stderr


def test_chat_connection_refused(cli, remote_project, httpx_mock):
    httpx_mock.add_exception(httpx.ConnectError("refused"), url=f"{BASE}/chat/completions")
    result = cli("chat", "q")
    assert result.exit_code == ExitStatus.REQUEST_FAILED and "cannot connect" in result.stderr


def test_chat_unknown_model_entry(cli, remote_project):
    result = cli("chat", "q", "--model", "remot")
    assert result.exit_code == ExitStatus.UNKNOWN and "did you mean 'remote'" in result.stderr


def test_external_entry_shows_in_status_without_secrets(cli, remote_project):
    result = cli("runtime", "status", "--json", "--probe-timeout", "0.5")
    data = json.loads(result.stdout)
    (inst,) = data["instances"]
    assert inst["state"] == "external" and inst["managed"] is False
    assert inst["base_url"] == BASE
    assert inst["health"]["reachable"] is False
    assert "sk-test-secret" not in result.stdout + result.stderr
