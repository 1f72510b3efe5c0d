from pathlib import Path

import pytest

from rxslurm.daemon.config import Config, ConfigError, config_path, load_config, parse_config


def test_defaults_when_the_default_file_is_missing(tmp_path: Path) -> None:
    assert load_config(tmp_path / "absent.toml", missing_ok=True) == Config()


def test_a_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")


def test_values_are_read_and_typed(tmp_path: Path) -> None:
    path = tmp_path / "rxd.toml"
    path.write_text(
        '[daemon]\nsocket = "/x/s.sock"\n[slurm]\ntimeout = 5\n[identity]\nmin_uid = 2000\n'
    )
    config = load_config(path)
    assert config.daemon.socket == Path("/x/s.sock")
    assert config.slurm.timeout == 5.0
    assert config.identity.min_uid == 2000
    assert config.source == path


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"deamon": {}}, "unknown section [deamon]"),
        ({"daemon": {"sokcet": "/x"}}, "unknown key daemon.sokcet"),
        ({"identity": {"min_uid": "1000"}}, "identity.min_uid must be an integer"),
        ({"identity": {"min_uid": 0}}, "root is never bound"),
        ({"identity": {"mode": "ldap"}}, 'identity.mode must be "local" or "platform"'),
        ({"slurm": {"timeout": -1}}, "slurm.timeout must be positive"),
        ({"daemon": {"socket": ""}}, "daemon.socket must be a non-empty path string"),
        ({"daemon": "x"}, "[daemon] must be a table"),
        ({"builds": {"max_context_mb": 0}}, "builds.max_context_mb must be at least 1"),
    ],
)
def test_invalid_configs_are_refused_with_the_reason(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert message in str(err.value)


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RXD_CONFIG", "/env/rxd.toml")
    assert config_path("/flag/rxd.toml") == Path("/flag/rxd.toml")
    assert config_path(None) == Path("/env/rxd.toml")
    monkeypatch.delenv("RXD_CONFIG")
    assert config_path(None) == Path("/etc/rxslurm/rxd.toml")


def test_the_shipped_example_config_is_valid() -> None:
    example = Path(__file__).parent.parent / "etc" / "rxd.toml"
    assert load_config(example) == Config(source=example)
