"""The one settings rule (envserver/settings.py): defaults < file < `--set` (in order) < flags, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from envserver.config import ServerConfig
from envserver.settings import SettingsError, apply_overrides, load_settings


def test_each_later_source_wins_and_dotted_keys_reach_into_sections(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("max_sessions: 3\nport: 9000\nsandbox:\n  memory: 2g\n  cpus: 1.5\n")
    loaded = load_settings(
        ServerConfig,
        config,
        ["port=9100", "sandbox.memory=4g", "port=9200", "warm_pool_tasks=[a, b]"],
        {"max_sessions": 7, "host": None},
        base={"auth_token": "from-env", "port": 1},
    )
    assert loaded.max_sessions == 7  # the flag over the file
    assert loaded.port == 9200  # the last --set over the earlier one and the file (and the base)
    assert loaded.sandbox.memory == "4g" and loaded.sandbox.cpus == 1.5  # one key of a section; the rest stays
    assert loaded.warm_pool_tasks == ["a", "b"] and loaded.auth_token == "from-env"
    assert loaded.host == ServerConfig().host  # a flag not given (None) leaves the default


def test_values_are_yaml(tmp_path: Path) -> None:
    data = apply_overrides({}, ["a=0.5", "b=true", "c=null", "d.e=[1, 2]", "f=text with spaces", "g="])
    assert data == {"a": 0.5, "b": True, "c": None, "d": {"e": [1, 2]}, "f": "text with spaces", "g": None}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["novalue"], "--set expects KEY=VALUE, got 'novalue'"),
        (["=3"], "--set expects KEY=VALUE"),
        (["port=1", "port.sub=2"], "'port' is not a section"),
        (["port=[1"], "the value is not valid YAML"),
        (["max_sesions=3"], "ServerConfig from --set: max_sesions: Extra inputs are not permitted"),
        (["keep_alive_s=0"], "keep_alive_s: Input should be greater than 0"),
    ],
)
def test_bad_overrides_are_one_line_naming_what_is_wrong(overrides: list[str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(ServerConfig, None, overrides)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_file_that_is_not_a_mapping_or_not_yaml(tmp_path: Path) -> None:
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(SettingsError, match="expected a mapping of ServerConfig fields, got list"):
        load_settings(ServerConfig, listed)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_settings(ServerConfig, empty) == ServerConfig()
