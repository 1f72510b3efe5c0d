"""The one table of project settings (rxslurm.protocol.settings) is what rxd validates and what
rxctl offers and shows; a setting that left the table (gpu_mem_gb) breaks nothing stored."""

from __future__ import annotations

import logging
from dataclasses import fields

import pytest

from rxslurm.cli import render
from rxslurm.cli.commands_project import create, set_, settings_body
from rxslurm.daemon.config import Config, parse_config
from rxslurm.daemon.errors import BadRequest
from rxslurm.daemon.settings import (
    MAX_STRING_BYTES,
    Settings,
    apply_changes,
    differs_from_snapshot,
)
from rxslurm.protocol.settings import NAMES, SETTINGS


def test_the_daemons_settings_are_the_tables_in_its_order_and_types() -> None:
    assert tuple((f.name, f.type) for f in fields(Settings)) == tuple(
        (s.name, s.kind.__name__) for s in SETTINGS
    )
    # Every setting has a deployment default of its type.
    defaults = Config().defaults
    assert isinstance(defaults, Settings)
    assert all(isinstance(getattr(defaults, s.name), s.kind) for s in SETTINGS)
    assert set(MAX_STRING_BYTES) == {s.name for s in SETTINGS if s.kind is str}
    assert all(s.max_bytes > 0 for s in SETTINGS if s.kind is str)


@pytest.mark.parametrize("command", [create, set_], ids=["create", "set"])
def test_rxctl_offers_one_option_per_setting_with_the_tables_flags_and_help(command) -> None:
    options = {p.name: p for p in command.params if p.name in NAMES}
    assert list(options) == list(NAMES)
    for setting in SETTINGS:
        option = options[setting.name]
        assert tuple(option.opts) == setting.flags
        assert (option.help, option.metavar, option.default) == (
            setting.help,
            setting.metavar,
            None,
        )


def test_rxctl_sends_only_what_was_given_under_the_apis_names() -> None:
    given = {name: None for name in NAMES} | {"mem_mb": 16384, "gpu_driver": "none"}
    assert settings_body(given) == {"mem_mb": 16384, "gpu_driver": ""}


def test_project_show_lists_every_setting_with_its_option_and_unit() -> None:
    lines = render.project_lines(
        {"name": "p", "settings": {"mem_mb": 2048, "time_limit_min": 90}, "effective": {}}
    )
    rows = {line.split()[0]: line.split() for line in lines if line.split()[:1] != []}
    for setting in SETTINGS:
        assert rows[setting.name][1] == setting.option
    assert rows["mem_mb"][2:4] == ["2048", "MB"] and rows["time_limit_min"][2:4] == ["90", "min"]
    assert "gpu_mem_gb" not in rows


def test_gpu_memory_is_refused_as_an_unknown_setting() -> None:
    with pytest.raises(BadRequest, match="unknown setting 'gpu_mem_gb'; valid settings: image,"):
        apply_changes(Settings(), {"gpu_mem_gb": 40})


def test_a_ledger_row_or_snapshot_holding_a_retired_setting_still_reads() -> None:
    row = {**Settings(cpus=2).to_dict(), "gpu_mem_gb": 40, "id": 1, "name": "p"}
    saved = Settings.from_row(row)
    assert saved == Settings(cpus=2)
    # A job started before the setting went recorded it; that alone is no pending change.
    assert not differs_from_snapshot(saved, {**saved.to_dict(), "gpu_mem_gb": 40})
    assert differs_from_snapshot(saved, {**saved.to_dict(), "cpus": 4})


def test_an_older_config_naming_gpu_memory_loads_with_a_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="rxslurm.config"):
        config = parse_config({"defaults": {"gpu_mem_gb": 0, "cpus": 2}})
    assert config.defaults.cpus == 2
    assert "defaults.gpu_mem_gb is no longer used" in caplog.text
    with pytest.raises(ValueError, match="unknown key defaults.gpu_mem"):
        parse_config({"defaults": {"gpu_mem": 0}})
