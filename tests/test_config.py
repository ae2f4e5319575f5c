"""Settings: precedence, the TOML file, ranges and choices, and errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from recommender.config import SETTINGS_JSON_ENV, Settings
from recommender.errors import ConfigError


def test_defaults_and_derived_paths():
    settings = Settings.load(environ={})
    assert settings == Settings()
    assert settings.data_dir == Path("indexes/default") and settings.model == Settings.DEFAULT_MODEL
    assert settings.store_path == Path("indexes/default/store.sqlite")
    assert settings.index_root == Path("indexes/default/index")
    assert Settings().max_header_bytes == 16_384  # Settings() alone: the defaults
    assert settings.replace(cors_origins=" https://a.example/, ,https://b.example").allowed_origins == [
        "https://a.example", "https://b.example"]


def test_precedence_overrides_environment_file_defaults(tmp_path):
    config = tmp_path / "recommender.toml"
    config.write_text('[recommender]\nport = 7000\nworkers = 3\nfallback = "latest"\n')
    environ = {"RECOMMENDER_WORKERS": "2", "RECOMMENDER_PORT": "7100", "RECOMMENDER_CONFIG_FILE": str(config)}
    settings = Settings.load({"port": 7200, "model": None}, environ=environ)
    assert (settings.port, settings.workers, settings.fallback, settings.batch_size) == (7200, 2, "latest", 32)
    assert settings.config_file == config
    assert Settings.load(environ={"RECOMMENDER_PORT": "7100"}, config_file=config).port == 7100


def test_config_file_sources(tmp_path):
    top = tmp_path / "top.toml"
    top.write_text('batch_size = 8\nranker_file = ""\n')
    settings = Settings.load(environ={}, config_file=top)
    assert settings.batch_size == 8 and settings.ranker_file is None
    override = tmp_path / "other.toml"
    override.write_text("[recommender]\nbatch_size = 4\n")
    # --config (the config_file override) beats the argument and the variable
    assert Settings.load({"config_file": override}, environ={"RECOMMENDER_CONFIG_FILE": str(top)},
                         config_file=top).batch_size == 4
    with pytest.raises(ConfigError, match="config file not found"):
        Settings.load(environ={}, config_file=tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("port = \n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        Settings.load(environ={}, config_file=broken)


def test_environ_is_honoured_exactly(monkeypatch):
    monkeypatch.setenv("RECOMMENDER_PORT", "9001")
    assert Settings.load().port == 9001
    assert Settings.load(environ={}).port == 8000  # the real environment is not read
    assert Settings().port == 8000  # nor by the constructor
    environ = {"RECOMMENDER_WORKERS": "", "RECOMMENDER_DEDUP": "off", "RECOMMENDER_API_DOCS": "yes",
               "RECOMMENDER_RANKER_FILE": "/r.json", "recommender_port": "1", SETTINGS_JSON_ENV: "{}",
               "RECOMMENDER_NOT_A_SETTING": "x"}
    settings = Settings.load(environ=environ)
    assert settings.workers == 1  # empty: ignored
    assert settings.dedup is False and settings.api_docs is True and settings.ranker_file == Path("/r.json")
    assert settings.port == 8000  # names are upper case


def test_unknown_keys_are_refused_with_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown setting 'prot'; known: api_docs, api_key, .*workers"):
        Settings.load({"prot": 1}, environ={})
    config = tmp_path / "c.toml"
    config.write_text("[recommender]\nworkerz = 2\n")
    with pytest.raises(ConfigError, match=rf"unknown setting 'workerz' in {config}; known: api_docs"):
        Settings.load(environ={}, config_file=config)
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        Settings().replace(colour="red")


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("port", 0, "setting 'port' must be greater than or equal to 1, got 0"),
    ("port", 65536, "setting 'port' must be less than or equal to 65535, got 65536"),
    ("workers", 0, "setting 'workers' must be greater than or equal to 1"),
    ("batch_size", 0, "setting 'batch_size' must be greater than or equal to 1"),
    ("candidates", 0, "setting 'candidates'"),
    ("chunk_words", 0, "setting 'chunk_words'"),
    ("max_chunks", -1, "setting 'max_chunks'"),
    ("keep_versions", 0, "setting 'keep_versions'"),
    ("mmr_lambda", 1.5, "setting 'mmr_lambda' must be less than or equal to 1"),
    ("min_confidence", -0.1, "setting 'min_confidence' must be greater than or equal to 0"),
    ("search_semantic_weight", 2, "setting 'search_semantic_weight'"),
    ("header_timeout_seconds", 0, "setting 'header_timeout_seconds' must be greater than 0"),
    ("keep_alive_seconds", -1, "setting 'keep_alive_seconds'"),
    ("index_poll_seconds", 0, "setting 'index_poll_seconds'"),
    ("half_life_days", -1, "setting 'half_life_days'"),
    ("fallback", "nearest", "setting 'fallback' must be 'none', 'section' or 'latest', got 'nearest'"),
    ("precision", "float16", "setting 'precision' must be 'auto', 'float32', 'bfloat16' or 'int8'"),
    ("backend", "tensorrt", "setting 'backend' must be 'auto', 'torch', 'onnx' or 'openvino', got 'tensorrt'"),
    ("batch_size", "lots", "setting 'batch_size' must be a valid integer"),
    ("dedup", "maybe", "setting 'dedup' must be a valid boolean"),
])
def test_bad_values_raise_one_line_config_errors(name, value, expected):
    with pytest.raises(ConfigError) as caught:
        Settings.load({name: value}, environ={})
    message = str(caught.value)
    assert message.startswith(expected) and "\n" not in message
    with pytest.raises(ConfigError, match=f"setting '{name}'"):
        Settings().replace(**{name: value})


def test_bad_values_say_where_they_came_from(tmp_path):
    with pytest.raises(ConfigError, match=r"got '0' \(from \$RECOMMENDER_WORKERS\)"):
        Settings.load(environ={"RECOMMENDER_WORKERS": "0"})
    config = tmp_path / "c.toml"
    config.write_text('fallback = "nearest"\n')
    with pytest.raises(ConfigError, match=rf"got 'nearest' \(in {config}\)"):
        Settings.load(environ={}, config_file=config)


def test_frozen_replace_validates_and_round_trips_as_json(tmp_path):
    settings = Settings.load({"data_dir": tmp_path, "ranker_file": tmp_path / "r.json", "api_key": "k"}, environ={})
    with pytest.raises(ValidationError, match="frozen"):
        settings.port = 1  # type: ignore[misc]
    changed = settings.replace(port=8080, min_confidence=0.0)
    assert (changed.port, changed.min_confidence, changed.data_dir) == (8080, 0.0, tmp_path)
    assert settings.port == 8000
    assert Settings.model_validate_json(changed.model_dump_json()) == changed
    assert hash(changed) == hash(Settings.model_validate_json(changed.model_dump_json()))


def test_every_setting_has_a_description():
    for name, field in Settings.model_fields.items():
        assert field.description, name
