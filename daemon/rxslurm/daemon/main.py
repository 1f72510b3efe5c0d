"""rxd's command line: serve the API, apply ledger migrations."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import fields
from typing import Any

import click

from rxslurm.daemon.config import DEFAULT_CONFIG_PATH, Config, ConfigError, config_path, load_config
from rxslurm.daemon.logs import setup_logging
from rxslurm.daemon.version import __version__

CONFIG_HELP = f"Config file (default: $RXD_CONFIG or {DEFAULT_CONFIG_PATH})."


def _load(config_flag: str | None) -> Config:
    path = config_path(config_flag)
    # Only the default location may be absent: a file someone named must exist.
    explicit = bool(config_flag or os.environ.get("RXD_CONFIG"))
    try:
        return load_config(path, missing_ok=not explicit)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rxd")
def cli() -> None:
    """rxd: the rx-slurm daemon (runs as root).

    Example: rxd --version
    """


@cli.command()
@click.option("-c", "--config", "config_flag", metavar="FILE", help=CONFIG_HELP)
def serve(config_flag: str | None) -> None:
    """Serve the API on the Unix socket until SIGTERM.

    Example: rxd serve --config /etc/rxslurm/rxd.toml
    """
    try:
        from rxslurm.daemon.api.serve import serve as run
        from rxslurm.daemon.api.socket_files import StartupError
    except ModuleNotFoundError as exc:
        raise _missing_dependency(exc) from None

    config = _load(config_flag)
    setup_logging(config.daemon.log_level)
    if os.geteuid() != 0:
        click.echo("Warning: rxd is not running as root; it cannot act for other users.", err=True)
    try:
        asyncio.run(run(config))
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:
        # Ledger and filesystem refusals carry their own message.
        raise click.ClickException(f"rxd failed to start: {exc}") from None


@cli.command()
@click.option("-c", "--config", "config_flag", metavar="FILE", help=CONFIG_HELP)
def migrate(config_flag: str | None) -> None:
    """Create the ledger or bring its schema up to date; running it again changes nothing.

    Example: rxd migrate
    """
    try:
        from rxslurm.daemon.ledger.store import Ledger
    except ModuleNotFoundError as exc:
        raise _missing_dependency(exc) from None

    config = _load(config_flag)
    try:
        ledger = Ledger.open(config.daemon.ledger, migrate=True)
    except Exception as exc:
        raise click.ClickException(str(exc)) from None
    applied = ledger.last_applied if hasattr(ledger, "last_applied") else []
    version = ledger.schema_version()
    ledger.close()
    if applied:
        click.echo(f"applied {', '.join(applied)}; schema is at {version}")
    else:
        click.echo(f"nothing to do; schema is at {version}")


def toml_value(value: Any) -> str:
    """A config value as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return toml_string(str(value))


def toml_string(text: str) -> str:
    """A TOML basic string; control characters escaped, as TOML requires."""
    escaped = "".join(
        "\\" + ch if ch in '"\\' else f"\\u{ord(ch):04x}" if ch < " " or ch == "\x7f" else ch
        for ch in text
    )
    return f'"{escaped}"'


def effective_lines(config: Config) -> list[str]:
    """Every section and key with the value rxd would use, as a TOML file rxd can read back."""
    lines: list[str] = []
    for section in fields(config):
        if section.name == "source":
            continue
        values = getattr(config, section.name)
        lines.extend(["", f"[{section.name}]"])
        lines.extend(f"{f.name} = {toml_value(getattr(values, f.name))}" for f in fields(values))
    return lines[1:]


@cli.command("check-config")
@click.option("-c", "--config", "config_flag", metavar="FILE", help=CONFIG_HELP)
def check_config(config_flag: str | None) -> None:
    """Validate a config file and print the effective values (defaults filled in) as TOML.

    Exits 1 with the reason when the file is invalid; starts nothing and changes nothing.

    Example: rxd check-config --config /etc/rxslurm/rxd.toml
    """
    config = _load(config_flag)
    where = (
        f"{config.source}: valid"
        if config.source
        else f"no config file at {config_path(config_flag)}: the defaults apply"
    )
    click.echo(f"# {where}; effective values:")
    click.echo("\n".join(effective_lines(config)))


def _missing_dependency(exc: ModuleNotFoundError) -> click.ClickException:
    # A login node installs the client side alone (`rx-slurm`); rxd needs `rx-slurm[daemon]`.
    return click.ClickException(
        f"rxd needs the daemon's dependencies ({exc.name} is not installed): "
        "install rx-slurm[daemon] on the host that runs rxd"
    )


def main() -> None:  # pragma: no cover - console entry for `python -m`
    sys.exit(cli())
