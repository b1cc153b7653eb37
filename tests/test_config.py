"""llamafarm.yaml: both shapes, located errors, discovery, precedence, schema drift."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from lf.config.names import Names
from lf.config.project import expand_env_ref, find_config, load_project
from lf.errors import ConfigError, ExitStatus

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).parent.parent


@pytest.mark.parametrize("name", sorted(p.name for p in (FIXTURES / "configs").glob("*.yaml")))
def test_real_project_files_validate(cli, name):
    result = cli("config", "validate", str(FIXTURES / "configs" / name))
    assert result.exit_code == 0, result.stderr
    assert "valid" in result.stdout


def test_seed_shape_normalises_to_one_entry_named_after_the_provider():
    project = load_project(FIXTURES / "configs" / "seed_lemonade.yaml")
    assert project.shape == "single"
    (entry,) = project.models
    assert (entry.name, entry.provider, entry.model) == ("lemonade", "lemonade", "Phi-3-mini-4k-instruct-onnx")
    assert entry.provider_config == {"backend": "onnx", "port": 11534, "context_size": 4096}
    assert entry.model_api_parameters == {"temperature": 0.7}
    assert project.default_model == "lemonade"


def test_list_shape_keeps_every_entry_and_the_default():
    project = load_project(FIXTURES / "configs" / "list_full.yaml")
    assert project.shape == "list"
    assert [m.name for m in project.models] == ["local", "fast", "expert", "onnx", "gateway"]
    assert project.default_model == "local"
    assert Names(project).entry("expert").api_key == "${OPENAI_API_KEY}"
    assert Names(project).entry("local").line == 38


def test_first_entry_is_the_default_without_default_model():
    project = load_project(FIXTURES / "configs" / "list_two_llamacpp.yaml")
    assert project.default_model == "alpha"


def test_entry_marked_default_wins_over_first(tmp_path):
    path = tmp_path / "llamafarm.yaml"
    path.write_text(
        "version: v1\nname: p\nnamespace: n\nruntime:\n  models:\n"
        "    - {name: a, provider: llamacpp, model: smollm2-135m}\n"
        "    - {name: b, provider: llamacpp, model: smollm2-135m, default: true}\n"
    )
    assert load_project(path).default_model == "b"


@pytest.mark.parametrize(
    "name, expected",
    [
        (
            "wrong_port_type.yaml",
            ["wrong_port_type.yaml:10:15:", "runtime.models[0].provider_config.port", "expected an integer"],
        ),
        (
            "unknown_provider.yaml",
            ["unknown_provider.yaml:7:17:", "runtime.models[0].provider", "'lemonaid' is not allowed", "llamacpp"],
        ),
        (
            "missing_fields.yaml",
            ["missing required field 'namespace'", "runtime.models[0]: missing required field 'name'"],
        ),
        ("bad_default.yaml", ["runtime.default_model", "names no model entry", "duplicate model name 'local'"]),
        ("syntax_error.yaml", ["syntax_error.yaml:7:1: invalid YAML"]),
        ("empty.yaml", ["the file is empty"]),
        ("latin1.yaml", ["latin1.yaml:2: not valid UTF-8"]),
        ("binary.yaml", ["binary file"]),
    ],
)
def test_broken_files_are_rejected_with_location(cli, name, expected):
    result = cli("config", "validate", str(FIXTURES / "broken" / name))
    assert result.exit_code == ExitStatus.CONFIG
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr


def test_unknown_keys_are_kept_as_warnings_and_strict_makes_them_errors(cli):
    """LlamaFarm's loader does not forbid extra keys: neither does lf, but it says where they are."""
    path = FIXTURES / "warnings" / "unknown_runtime_key.yaml"
    located = "unknown_runtime_key.yaml:7:3: runtime.base_ulr: unknown field 'base_ulr' (did you mean 'base_url'?)"
    result = cli("config", "validate", str(path))
    assert result.exit_code == 0 and "valid" in result.stdout
    assert f"Warning: {path.parent}/{located}" in result.stderr
    strict = cli("config", "validate", str(path), "--strict")
    assert strict.exit_code == ExitStatus.CONFIG and located in strict.stderr
    data = json.loads(cli("config", "validate", str(path), "--json").stdout)
    assert data["valid"] is True and data["problems"] == []
    (warning,) = data["warnings"]
    assert (warning["line"], warning["column"], warning["field"], warning["severity"]) == (
        7,
        3,
        "runtime.base_ulr",
        "warning",
    )


def test_validate_json_lists_problems_with_positions(cli):
    result = cli("config", "validate", str(FIXTURES / "broken" / "wrong_port_type.yaml"), "--json")
    assert result.exit_code == ExitStatus.CONFIG
    data = json.loads(result.stdout)
    assert data["valid"] is False
    (problem,) = data["problems"]
    assert (problem["line"], problem["column"], problem["field"]) == (10, 15, "runtime.models[0].provider_config.port")


def test_a_directory_and_an_unreadable_file_are_config_errors(cli, tmp_path):
    result = cli("config", "validate", str(tmp_path))
    assert result.exit_code == ExitStatus.CONFIG and "is a directory" in result.stderr
    locked = tmp_path / "locked.yaml"
    locked.write_text("version: v1\n")
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):  # root reads anything: nothing to show
            return
        result = cli("config", "validate", str(locked))
        assert result.exit_code == ExitStatus.CONFIG and "cannot be read" in result.stderr
    finally:
        locked.chmod(0o600)


def test_other_commands_show_the_same_located_message(cli):
    shutil.copy(FIXTURES / "broken" / "wrong_port_type.yaml", "llamafarm.yaml")
    result = cli("runtime", "status")
    assert result.exit_code == ExitStatus.CONFIG
    assert "llamafarm.yaml:10:15: runtime.models[0].provider_config.port" in result.stderr
    result = cli("chat", "hi")
    assert result.exit_code == ExitStatus.CONFIG and "runtime.models[0].provider_config.port" in result.stderr


def test_discovery_walks_up_and_respects_precedence(tmp_path, monkeypatch):
    project = tmp_path / "project"
    nested = project / "a" / "b"
    nested.mkdir(parents=True)
    shutil.copy(FIXTURES / "configs" / "list_two_llamacpp.yaml", project / "llamafarm.yml")
    monkeypatch.chdir(nested)
    assert find_config() == project / "llamafarm.yml"
    other = tmp_path / "other.yaml"
    shutil.copy(FIXTURES / "configs" / "seed_lemonade.yaml", other)
    monkeypatch.setenv("LF_CONFIG", str(other))
    assert find_config() == other
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text("x: 1\n")
    assert find_config(str(explicit)) == explicit
    with pytest.raises(ConfigError, match="no such file"):
        find_config(str(tmp_path / "missing.yaml"))


def test_env_references(monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "s3cr3t")
    assert expand_env_ref("${SECRET_KEY}") == "s3cr3t"
    assert expand_env_ref("${env:SECRET_KEY}") == "s3cr3t"
    assert expand_env_ref("${MISSING_VAR:-fallback}") == "fallback"
    assert expand_env_ref("plain") == "plain"


def test_config_show_redacts_keys_and_fills_defaults(cli, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-do-not-print")
    shutil.copy(FIXTURES / "configs" / "list_full.yaml", "llamafarm.yaml")
    Path("llamafarm.yaml").write_text(
        Path("llamafarm.yaml").read_text().replace("${OPENAI_API_KEY}", "sk-inline-secret")
    )
    result = cli("config", "show", "--json")
    assert result.exit_code == 0, result.stderr
    assert "sk-inline-secret" not in result.stdout and "sk-live-do-not-print" not in result.stdout
    data = json.loads(result.stdout)
    models = {m["name"]: m for m in data["models"]}
    assert models["expert"]["api_key"] == "***"
    assert models["gateway"]["api_key"] == "${env:UNIVERSAL_KEY}"
    assert models["local"]["port"] == 11634 and models["local"]["context_size"] == 2048
    assert models["local"]["host"] == "127.0.0.1"
    assert models["fast"]["base_url"] == "http://localhost:11434/v1"
    assert models["fast"]["managed"] is False


def test_precedence_flag_over_env_over_file_over_default(monkeypatch):
    from lf.core.targets import Overrides, build_spec

    project = load_project(FIXTURES / "configs" / "list_full.yaml")
    entry = Names(project).entry("local")
    assert build_spec(entry, project, Overrides(), single=True).port == 11634  # file
    monkeypatch.setenv("LLAMACPP_PORT", "12001")
    assert build_spec(entry, project, Overrides(), single=True).port == 12001  # env over file
    assert build_spec(entry, project, Overrides(port=12002), single=True).port == 12002  # flag over env
    monkeypatch.delenv("LLAMACPP_PORT")
    bare = load_project(FIXTURES / "configs" / "list_two_llamacpp.yaml")
    spec = build_spec(Names(bare).entry("alpha"), bare, Overrides(), single=True)
    assert (spec.port, spec.port_auto, spec.context_size) == (11634, True, 4096)  # manifest defaults


def test_config_init_refuses_to_overwrite(cli):
    assert cli("config", "init").exit_code == 0
    assert load_project(Path("llamafarm.yaml")).default_model == "default"
    again = cli("config", "init")
    assert again.exit_code == 1 and "--force" in again.stderr
    assert cli("config", "init", "--force").exit_code == 0


def test_committed_schema_matches_the_code():
    from lf.config.schema import schema, schema_yaml

    committed = (REPO / "schema.yaml").read_text()
    assert committed == schema_yaml(), "schema.yaml is stale: run `make schema`"
    assert yaml.safe_load(committed) == schema()


def test_provider_enum_follows_the_runtime_registry(tmp_path, monkeypatch):
    from lf.config.schema import schema
    from lf.runtimes.registry import all_runtimes, runtime_names

    enum = schema()["properties"]["runtime"]["oneOf"][0]["properties"]["provider"]["enum"]
    assert enum == sorted([*runtime_names(), "router"])  # the runtimes, and LlamaFarm's router (lf serve routes it)
    extra = tmp_path / "more" / "myengine"
    extra.mkdir(parents=True)
    (extra / "manifest.toml").write_text('name = "myengine"\ndescription = "test"\nmanaged = false\n')
    monkeypatch.setenv("LF_RUNTIMES_PATH", str(tmp_path / "more"))
    all_runtimes.cache_clear()
    enum = schema()["properties"]["runtime"]["oneOf"][0]["properties"]["provider"]["enum"]
    assert "myengine" in enum
    all_runtimes.cache_clear()


def test_schema_validates_fixtures_like_a_standard_validator():
    """schema.yaml is real JSON Schema: a standard validator agrees with lf on the fixtures."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = yaml.safe_load((REPO / "schema.yaml").read_text())
    for path in (FIXTURES / "configs").glob("*.yaml"):
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    for name in ("wrong_port_type.yaml", "unknown_provider.yaml", "missing_fields.yaml"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(yaml.safe_load((FIXTURES / "broken" / name).read_text()), schema)


def test_alias_bomb_is_refused_quickly(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="too large"):
        load_project(path)


def test_cached_config_is_reused_only_while_the_file_is_unchanged(tmp_path, monkeypatch):
    import lf.config.yamlfile as config

    path = tmp_path / "llamafarm.yaml"
    shutil.copy(FIXTURES / "configs" / "list_two_llamacpp.yaml", path)
    first = load_project(path)
    assert list((tmp_path / "state" / "cache").glob("config-*.json"))
    monkeypatch.setattr(config, "read_yaml", lambda p: pytest.fail("an unchanged file must not be parsed again"))
    assert [m.name for m in load_project(path).models] == [m.name for m in first.models]
    monkeypatch.undo()
    path.write_text(path.read_text().replace("name: beta", "name: gamma"))
    assert [m.name for m in load_project(path).models] == ["alpha", "gamma"]
    path.write_text(path.read_text().replace("provider: llamacpp", "provider: nosuch", 1))
    with pytest.raises(ConfigError, match="nosuch"):
        load_project(path)  # a broken edit is reported, not hidden behind the cached copy


def test_a_literal_api_key_is_never_copied_into_the_cache(tmp_path):
    path = tmp_path / "llamafarm.yaml"
    path.write_text(
        "version: v1\nname: p\nnamespace: n\nruntime:\n  provider: openai\n  model: m\n"
        "  base_url: http://127.0.0.1:9/v1\n  api_key: sk-literal-secret\n"
    )
    assert load_project(path).models[0].api_key == "sk-literal-secret"
    cache = tmp_path / "state" / "cache"
    assert not cache.exists() or all("sk-literal-secret" not in f.read_text() for f in cache.iterdir())
