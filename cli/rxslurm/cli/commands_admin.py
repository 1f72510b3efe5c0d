"""`rxctl admin ...`: binding codes, bindings and the audit log, for rx-slurm admins."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import click

from rxslurm.cli import render
from rxslurm.cli.client import Client
from rxslurm.cli.common import (
    api_errors,
    echo,
    emit_json,
    json_option,
    list_command,
    list_options,
    print_list,
)
from rxslurm.protocol import routes


@click.group()
def admin() -> None:
    """Admin commands: bindings, the audit log, quotas, containers (members of the admin group).

    Example: rxctl admin bindings
    """


@admin.command("code")
@click.argument("platform_user")
@click.option("--linux-user", metavar="U", help="Only this Linux user may redeem the code.")
@click.option("--ttl", "ttl_min", type=int, metavar="MIN", help="Minutes the code is valid.")
@click.option("--display-name", metavar="TEXT", help="A readable name for a new platform user.")
@json_option
@click.pass_obj
@api_errors
def code(
    client: Client,
    platform_user: str,
    linux_user: str | None,
    ttl_min: int | None,
    display_name: str | None,
    json_: bool,
) -> None:
    """Issue a one-time code that binds a Linux user to PLATFORM_USER (`rxctl bind CODE`).

    In text mode the code alone goes to stdout (details to stderr), so a script can capture it:
    CODE=$(rxctl admin code alice).

    Example: rxctl admin code alice --linux-user rxalice --ttl 30
    """
    body: dict[str, Any] = {"platform_user": platform_user}
    for key, value in (
        ("linux_user", linux_user),
        ("ttl_min", ttl_min),
        ("display_name", display_name),
    ):
        if value is not None:
            body[key] = value
    answer = client.post(routes.ADMIN_CODES, body)
    if json_:
        emit_json(answer)
        return
    echo(answer["code"])
    who = answer.get("linux_user") or "any Linux user"
    echo(
        f"one-time code for platform user {answer['platform_user']}, redeemable by {who} "
        f"until {answer.get('expires_at')}: rxctl bind {answer['code']}",
        err=True,
    )


@admin.command("bind")
@click.argument("platform_user")
@click.argument("linux_user")
@json_option
@click.pass_obj
@api_errors
def bind(client: Client, platform_user: str, linux_user: str, json_: bool) -> None:
    """Bind LINUX_USER to PLATFORM_USER without a code.

    Example: rxctl admin bind alice rxalice
    """
    answer = client.post(
        routes.ADMIN_BIND, {"platform_user": platform_user, "linux_user": linux_user}
    )
    if json_:
        emit_json(answer)
    else:
        echo(
            f"Bound {answer.get('user', linux_user)} to platform user "
            f"{answer.get('platform_user', platform_user)}."
        )


@admin.command("unbind")
@click.argument("platform_user", required=False)
@click.option("--linux-user", metavar="U", help="Unbind this Linux user instead.")
@json_option
@click.pass_obj
@api_errors
def unbind(client: Client, platform_user: str | None, linux_user: str | None, json_: bool) -> None:
    """Remove a binding, named by PLATFORM_USER or by --linux-user.

    Example: rxctl admin unbind --linux-user rxalice
    """
    if (platform_user is None) == (linux_user is None):
        raise click.ClickException("give either PLATFORM_USER or --linux-user U (exactly one)")
    body = (
        {"platform_user": platform_user}
        if platform_user is not None
        else {"linux_user": linux_user}
    )
    answer = client.post(routes.ADMIN_UNBIND, body)
    if json_:
        emit_json(answer)
    else:
        echo(
            f"Unbound {answer.get('user', linux_user or '?')} from platform user "
            f"{answer.get('platform_user', platform_user or '?')}."
        )


@admin.command("bindings")
@list_command
def bindings(client: Client, json_: bool, shape: render.Shape) -> None:
    """List every binding between platform users and Linux users.

    Example: rxctl admin bindings --json
    """
    print_list(client.get(routes.ADMIN_BINDINGS), "bindings", render.binding_lines, json_, shape)


@admin.command("audit")
@list_options
@click.option("-P", "--project", metavar="PROJECT", help="Only events about this project.")
@click.option("--limit", type=int, metavar="N", help="At most N events (newest).")
@click.option("--since", metavar="ISO", help="Only events at or after this time (ISO 8601).")
@json_option
@click.pass_obj
@api_errors
def audit(
    client: Client,
    project: str | None,
    limit: int | None,
    since: str | None,
    json_: bool,
    shape: render.Shape,
) -> None:
    """Show the audit log: who did what, when, and from where.

    Example: rxctl admin audit --project alpha --since 2024-05-01T00:00:00Z
    """
    query = {
        k: v for k, v in (("project", project), ("limit", limit), ("since", since)) if v is not None
    }
    route = routes.ADMIN_AUDIT + (f"?{urlencode(query)}" if query else "")
    print_list(client.get(route), "events", render.event_lines, json_, shape)


# Quotas and the fleet live in their own module.
from rxslurm.cli.commands_gc import admin_gc  # noqa: E402
from rxslurm.cli.commands_quota import containers, quota, stop  # noqa: E402

admin.add_command(quota)
admin.add_command(containers)
admin.add_command(stop)
admin.add_command(admin_gc)
