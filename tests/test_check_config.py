"""`rxd check-config` and the example etc/rxd.toml (fast: no root, no Slurm)."""

from __future__ import annotations

import tomllib
from dataclasses import fields, replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.daemon.config import Config, load_config, parse_config
from rxslurm.daemon.main import cli, effective_lines

EXAMPLE = Path(__file__).resolve().parent.parent / "etc" / "rxd.toml"


def schema() -> dict[str, set[str]]:
    return {
        section.name: {f.name for f in fields(section.default_factory())}  # type: ignore[misc]
        for section in fields(Config)
        if section.name != "source"
    }


def test_the_example_lists_every_key_of_the_schema() -> None:
    raw = tomllib.loads(EXAMPLE.read_text())
    assert {name: set(values) for name, values in raw.items()} == schema()


def test_the_example_shows_each_key_with_its_default() -> None:
    assert load_config(EXAMPLE) == Config(source=EXAMPLE)


def test_check_config_prints_every_effective_value_and_rxd_reads_them_back(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rxd.toml"
    path.write_text('[slurm]\ntimeout = 5\n[containers]\nfixed_mounts = ["/data:/data:ro"]\n')
    result = CliRunner().invoke(cli, ["check-config", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"# {path}: valid; effective values:\n")
    printed = tomllib.loads(result.output)
    assert {name: set(values) for name, values in printed.items()} == schema()
    assert printed["slurm"]["timeout"] == 5.0
    assert printed["daemon"]["log_level"] == "info"  # a default filled in
    assert parse_config(printed, source=path) == load_config(path)


def test_check_config_refuses_an_invalid_file_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "rxd.toml"
    path.write_text('[daemon]\nsokcet = "/x"\n')
    result = CliRunner().invoke(cli, ["check-config", "--config", str(path)])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {path}: unknown key daemon.sokcet; valid keys: socket, ledger, log_level, "
        "admin_group, listen, metrics_listen, metrics_remote\n"
    )


def test_check_config_names_a_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["check-config", "--config", str(tmp_path / "absent.toml")])
    assert result.exit_code == 1
    assert "not found" in result.output


def test_without_a_file_at_the_default_path_the_defaults_are_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RXD_CONFIG", raising=False)
    monkeypatch.setattr("rxslurm.daemon.main.config_path", lambda flag: tmp_path / "absent.toml")
    result = CliRunner().invoke(cli, ["check-config"])
    assert result.exit_code == 0, result.output
    assert "the defaults apply" in result.output.splitlines()[0]


@given(
    image=st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
    mounts=st.lists(st.text(alphabet='abc/:é\\"', max_size=10).map(lambda s: "/" + s), max_size=3),
)
def test_effective_values_round_trip_through_toml(image: str, mounts: list[str]) -> None:
    raw = {"defaults": {"image": image}}
    config = parse_config(raw)
    # fixed_mounts are validated: put arbitrary strings in through the dataclass instead.
    config = replace(config, containers=replace(config.containers, fixed_mounts=tuple(mounts)))
    printed = tomllib.loads("\n".join(effective_lines(config)))
    assert printed["defaults"]["image"] == image
    assert printed["containers"]["fixed_mounts"] == mounts
