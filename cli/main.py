"""rxctl: persistent research containers on Slurm, from a login node."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from rxslurm.cli.client import Client, ClientError

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("json_", "--json", is_flag=True, help="Print JSON instead of text.")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rx-slurm")
    except PackageNotFoundError:
        return "0+unknown"


def api_errors(func: F) -> F:
    """Turn client errors into click's one-line `Error: ...` and exit 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ClientError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), prog_name="rxctl")
@click.option(
    "--socket",
    "socket_",
    metavar="PATH",
    envvar="RXCTL_SOCKET",
    help=(
        "rxd's local socket (default: $RXCTL_SOCKET; else the network door named by "
        "$RXSLURM_SERVER or /etc/rxslurm/rxctl.toml; else /run/rxslurm/rxd.sock)."
    ),
)
@click.pass_context
def cli(ctx: click.Context, socket_: str | None) -> None:
    """rxctl: persistent, GPU-backed research containers on Slurm.

    Example: rxctl whoami
    """
    ctx.obj = Client(socket_)


@cli.command()
@json_option
@click.pass_obj
@api_errors
def whoami(client: Client, json_: bool) -> None:
    """Show who rxd says you are.

    Example: rxctl whoami --json
    """
    me = client.get("/v1/whoami")
    if json_:
        emit_json(me)
        return
    role = "admin" if me["admin"] else "user"
    click.echo(f"{me['user']} (uid {me['uid']}, {role})")


@cli.command()
@json_option
@click.pass_obj
def doctor(client: Client, json_: bool) -> None:
    """Check that rxd, MUNGE, Slurm and Apptainer are reachable, and which door rxctl uses.

    Example: rxctl doctor
    """
    from rxslurm.cli.door import munge_check

    door = client.door.describe() if client.door else client.door_error
    checks: dict[str, Any] = {"door": {"ok": client.door is not None, "detail": door}}
    checks["munge"] = munge_check(client.door)
    try:
        health = client.get("/v1/health")
    except ClientError as exc:
        checks["daemon"] = {"ok": False, "detail": str(exc)}
        if json_:
            emit_json({"ok": False, "checks": checks})
        else:
            _print_checks(checks)
        raise SystemExit(1) from None
    checks["daemon"] = {"ok": True, "detail": f"rxd {health['version']} answers"}
    if client.door and client.door.kind == "network":
        checks["munge"]["detail"] += "; rxd accepted this host's credential"
    checks.update(health["checks"])
    if json_:
        emit_json({"ok": health["ok"], "checks": checks})
    else:
        _print_checks(checks)
    if not health["ok"] or not all(check["ok"] for check in checks.values()):
        raise SystemExit(1)


def _print_checks(checks: dict[str, Any]) -> None:
    for name, check in checks.items():
        mark = "ok  " if check["ok"] else "FAIL"
        click.echo(f"{mark} {name:<10} {check['detail']}")


# Command groups live in their own modules, which import the helpers above: so register them last.
from rxslurm.cli.commands_admin import admin  # noqa: E402
from rxslurm.cli.commands_container import COMMANDS as CONTAINER_COMMANDS  # noqa: E402
from rxslurm.cli.commands_exec import exec_, shell  # noqa: E402
from rxslurm.cli.commands_identity import bind, unbind  # noqa: E402
from rxslurm.cli.commands_project import project  # noqa: E402

cli.add_command(bind)
cli.add_command(unbind)
cli.add_command(project)
cli.add_command(admin)
for _command in CONTAINER_COMMANDS:
    cli.add_command(_command)
cli.add_command(exec_)
cli.add_command(shell)
