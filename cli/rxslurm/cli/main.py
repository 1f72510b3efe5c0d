"""rxctl: persistent research containers on Slurm, from a login node.

The command tree is click's; each command's module is imported only when that command runs (or
when help lists them all), so a command pays only for its own imports. `rxctl exec` and
`rxctl status` usually do not come here at all: see rxslurm/cli/fastpath.py.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from rxslurm.cli import render
from rxslurm.cli.client import Client, ClientError
from rxslurm.cli.common import api_errors, echo, emit_json, json_option
from rxslurm.protocol import routes
from rxslurm.protocol.paths import CLI_CONFIG, DEFAULT_SOCKET

__all__ = ["api_errors", "cli", "emit_json", "json_option"]

# Command name -> "module:attribute", imported on first use.
LAZY_COMMANDS = {
    "admin": "rxslurm.cli.commands_admin:admin",
    "bind": "rxslurm.cli.commands_identity:bind",
    "disable": "rxslurm.cli.commands_container:disable",
    "enable": "rxslurm.cli.commands_container:enable",
    "env": "rxslurm.cli.commands_env:env",
    "exec": "rxslurm.cli.commands_exec:exec_",
    "export": "rxslurm.cli.commands_export:export",
    "gc": "rxslurm.cli.commands_gc:gc",
    "history": "rxslurm.cli.commands_history:history",
    "image": "rxslurm.cli.commands_image:image",
    "import": "rxslurm.cli.commands_export:import_",
    "kill": "rxslurm.cli.commands_ps:kill",
    "list": "rxslurm.cli.commands_container:list_",
    "logs": "rxslurm.cli.commands_logs:logs",
    "port-forward": "rxslurm.cli.commands_port_forward:port_forward",
    "project": "rxslurm.cli.commands_project:project",
    "ps": "rxslurm.cli.commands_ps:ps",
    "reset": "rxslurm.cli.commands_container:reset",
    "retry": "rxslurm.cli.commands_container:retry",
    "run": "rxslurm.cli.commands_run:run",
    "run-once": "rxslurm.cli.commands_run_once:run_once",
    "secret": "rxslurm.cli.commands_env:secret",
    "shell": "rxslurm.cli.commands_exec:shell",
    "snapshot": "rxslurm.cli.commands_container:snapshot",
    "start": "rxslurm.cli.commands_container:start",
    "status": "rxslurm.cli.commands_container:status",
    "stop": "rxslurm.cli.commands_container:stop",
    "unbind": "rxslurm.cli.commands_identity:unbind",
    "volume": "rxslurm.cli.commands_volume:volume",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported when asked for, not when rxctl starts."""

    def __init__(self, *args: object, lazy: dict[str, str], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            module, _, attribute = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            assert isinstance(command, click.Command) and command.name == cmd_name
            self.add_command(command)
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=LazyGroup,
    lazy=LAZY_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# The version is looked up only when --version is given (importlib.metadata is slow to import).
@click.version_option(package_name="rx-slurm", prog_name="rxctl")
@click.option(
    "--socket",
    "socket_",
    metavar="PATH",
    envvar="RXCTL_SOCKET",
    help=(
        "rxd's local socket (default: $RXCTL_SOCKET; else the network door named by "
        f"$RXSLURM_SERVER or {CLI_CONFIG}; else {DEFAULT_SOCKET})."
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
    me = client.get(routes.WHOAMI)
    if json_:
        emit_json(me)
        return
    role = "admin" if me["admin"] else "user"
    echo(f"{me['user']} (uid {me['uid']}, {role})")


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
        health = client.get(routes.HEALTH)
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
        echo(f"{mark} {name:<10} {render.safe(str(check['detail']))}")
