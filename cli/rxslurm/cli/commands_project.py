"""`rxctl project ...`: create, inspect and configure projects, and manage their members."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from typing import Any

import click

from rxslurm.cli import render, units
from rxslurm.cli.client import Client
from rxslurm.cli.common import (
    ProjectNamedFirst,
    api_errors,
    echo,
    echo_lines,
    emit_json,
    json_option,
    list_command,
    print_list,
    project_option,
)
from rxslurm.cli.project_choice import choose_project
from rxslurm.cli.volume_spec import BadVolumeSpec, split_mount
from rxslurm.protocol import routes
from rxslurm.protocol.settings import SETTINGS

ROLES = "owner|manager|editor|viewer"

# Options are built from the protocol's table of settings (rxslurm.protocol.settings). Every
# default is None: only the options given are sent, and the daemon validates the values (so a bad
# one is its one-line reason, not a usage screen).


class Words(click.ParamType):  # type: ignore[type-arg]
    """A command as a shell would split it, sent as a JSON list of words ("" for none): rxd and
    the holder keep it as data and never join it into a shell line."""

    name = "words"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            words = shlex.split(str(value))
        except ValueError as exc:
            self.fail(f"cannot split the command: {exc}", param, ctx)
        return json.dumps(words) if words else ""


_READERS: dict[str, Any] = {"memory": units.MEMORY, "time": units.MINUTES, "words": Words()}


def settings_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for setting in reversed(SETTINGS):
        option = click.option(
            *setting.flags,
            setting.name,
            type=_READERS.get(setting.reads, setting.kind),
            metavar=setting.metavar,
            default=None,
            help=setting.help,
        )
        func = option(func)
    return func


def settings_body(options: dict[str, Any]) -> dict[str, Any]:
    """The settings the user gave, as the API names them; `--gpu-driver none` is ""."""
    body = {s.name: options[s.name] for s in SETTINGS if options.get(s.name) is not None}
    if body.get("gpu_driver") == "none":
        body["gpu_driver"] = ""
    return body


def echo_warnings(answer: dict[str, Any]) -> None:
    """The change was made, but something around it was not (e.g. the workspace): say so."""
    for warning in answer.get("warnings") or []:
        echo(f"Warning: {warning}", err=True)


@click.group()
def project() -> None:
    """Create, inspect and configure projects and their members.

    Example: rxctl project show --project alpha
    """


@project.command("create")
@click.argument("name")
@settings_options
@json_option
@click.pass_obj
@api_errors
def create(client: Client, /, name: str, json_: bool, **options: Any) -> None:
    """Create a project; you become its owner.

    Names: 1-21 characters, lowercase letters, digits and "-", starting with a letter. The new
    name is an argument: --project and $RX_PROJECT name a project that exists.

    Example: rxctl project create alpha --gpus 1 -p gpu --mem 16G --time 1-00:00:00
    """
    body: dict[str, Any] = {"name": name}
    settings = settings_body(options)
    if settings:
        body["settings"] = settings
    created = client.post(routes.PROJECTS, body)
    echo_warnings(created)
    if json_:
        emit_json(created)
    else:
        echo(f"Created project {created['name']}; you are its owner.")


@project.command("list")
@list_command
def list_(client: Client, json_: bool, shape: render.Shape) -> None:
    """List the projects you are a member of (admins: all projects).

    Example: rxctl project list
    """
    print_list(client.get(routes.PROJECTS), "projects", render.project_list_lines, json_, shape)


@project.command("show", cls=ProjectNamedFirst)
@project_option
@json_option
@click.pass_obj
@api_errors
def show(client: Client, project: str | None, json_: bool) -> None:
    """Show a project: settings, effective values, run-as, workspace and members.

    Example: rxctl project show --project alpha --json
    """
    name = choose_project(client, project)
    answer = client.get(routes.path(routes.PROJECT, name))
    if json_:
        emit_json(answer)
    else:
        echo_lines(render.project_lines(answer))


@project.command("delete", cls=ProjectNamedFirst)
@project_option
@click.option("--yes", is_flag=True, help="Really delete (required; there is no prompt).")
@json_option
@click.pass_obj
@api_errors
def delete(client: Client, project: str | None, yes: bool, json_: bool) -> None:
    """Delete a project (owners only; not while its container is enabled).

    Example: rxctl project delete --project alpha --yes
    """
    name = choose_project(client, project)
    if not yes:
        raise click.ClickException(f"deleting project {name} cannot be undone; add --yes to do it")
    answer = client.request("DELETE", routes.path(routes.PROJECT, name))
    if json_:
        emit_json(answer)
    else:
        echo(f"Deleted project {answer.get('deleted', name)}.")


@project.command("set", cls=ProjectNamedFirst)
@project_option
@settings_options
@click.option(
    "--dev-mode",
    type=click.Choice(("on", "off")),
    default=None,
    help="Whether members may build images in the project (docs/images.md).",
)
@click.option(
    "--volume",
    "volumes",
    multiple=True,
    metavar="NAME:/path[:ro]",
    help="Mount a volume at /path (read-only with :ro) from the next start (docs/volumes.md). "
    "Repeatable.",
)
@click.option(
    "--no-volume",
    "unmount",
    multiple=True,
    metavar="NAME",
    help="Stop mounting a volume (from the next start). Repeatable.",
)
@json_option
@click.pass_obj
@api_errors
def set_(
    client: Client,
    /,
    project: str | None,
    json_: bool,
    dev_mode: str | None,
    volumes: tuple[str, ...],
    unmount: tuple[str, ...],
    **options: Any,
) -> None:
    """Change a project's settings; only the options given change (0 or "": the default).

    Example: rxctl project set --project alpha --cpus 2 --gpus 1 --account lab-a
    """
    settings = settings_body(options)
    if not settings and dev_mode is None and not volumes and not unmount:
        raise click.ClickException(
            "nothing to change; give at least one setting (see: rxctl project set -h)"
        )
    try:
        mounts = [split_mount(v) for v in volumes]
    except BadVolumeSpec as exc:
        raise click.ClickException(str(exc)) from None
    name = choose_project(client, project)
    if mounts or unmount:
        changed = set_mounts(client, name, mounts, unmount, quiet=json_)
        if not settings and dev_mode is None:
            if json_:
                emit_json(changed)
            return
    if dev_mode is not None:
        switched = client.request(
            "PUT", routes.path(routes.PROJECT_DEV_MODE, name), {"dev_mode": dev_mode == "on"}
        )
        if not settings:
            if json_:
                emit_json(switched)
            else:
                echo(f"Project {switched['name']}: dev mode {dev_mode}.")
            return
    answer = client.request("PATCH", routes.path(routes.PROJECT_SETTINGS, name), settings)
    echo_warnings(answer)
    if json_:
        emit_json(answer)
        return
    echo(f"Updated project {answer['name']}: {render.changed_settings(settings)}")
    if answer.get("settings_pending"):
        echo(render.PENDING_NOTE)


def set_mounts(
    client: Client,
    name: str,
    mounts: list[dict[str, Any]],
    unmount: tuple[str, ...],
    *,
    quiet: bool,
) -> dict[str, Any]:
    """Each mount and removal is its own request (rxd checks each); what is mounted after."""
    answer: dict[str, Any] = {}
    for volume in unmount:
        answer = client.request("DELETE", routes.path(routes.PROJECT_MOUNT, name, volume))
        echo_warnings(answer)
        if not quiet:
            echo(f"Project {name} no longer mounts volume {volume} (from its next start).")
    for mount in mounts:
        path = routes.path(routes.PROJECT_MOUNT, name, mount["volume"])
        body = {"target": mount["target"], "read_only": mount["read_only"]}
        answer = client.request("PUT", path, body)
        echo_warnings(answer)
        mode = "read-only" if mount["read_only"] else "read-write"
        if not quiet:
            echo(
                f"Project {name} mounts volume {mount['volume']} at {mount['target']} "
                f"({mode}), from its next start."
            )
    return answer


@project.command("run-as", cls=ProjectNamedFirst)
@project_option
@click.argument("mode", metavar="bound|service")
@json_option
@click.pass_obj
@api_errors
def run_as(client: Client, project: str | None, mode: str, json_: bool) -> None:
    """Choose who the container runs as: your bound Linux user, or the service account.

    Example: rxctl project run-as --project alpha service
    """
    name = choose_project(client, project)
    answer = client.request("PUT", routes.path(routes.PROJECT_RUN_AS, name), {"mode": mode})
    echo_warnings(answer)
    if json_:
        emit_json(answer)
    else:
        echo(
            f"Project {answer['name']} runs as {answer['run_as']} "
            f"(runtime user {render.cell(answer.get('runtime_user'))})."
        )


@project.group()
def member() -> None:
    """Add and remove project members and change their roles.

    Example: rxctl project member add --project alpha rxbob --role manager
    """


def _members_answer(answer: dict[str, Any], json_: bool, message: str) -> None:
    echo_warnings(answer)
    if json_:
        emit_json(answer)
    else:
        echo(message)


@member.command("add", cls=ProjectNamedFirst)
@project_option
@click.argument("user")
@click.option("--role", required=True, metavar=ROLES, help="The new member's role.")
@json_option
@click.pass_obj
@api_errors
def member_add(client: Client, project: str | None, user: str, role: str, json_: bool) -> None:
    """Add a member to a project (USER: their platform user; locally, their Linux name).

    Example: rxctl project member add --project alpha rxbob --role editor
    """
    name = choose_project(client, project)
    answer = client.post(routes.path(routes.PROJECT_MEMBERS, name), {"user": user, "role": role})
    _members_answer(answer, json_, f"Added {user} to {name} as {role}.")


@member.command("rm", cls=ProjectNamedFirst)
@project_option
@click.argument("user")
@json_option
@click.pass_obj
@api_errors
def member_rm(client: Client, project: str | None, user: str, json_: bool) -> None:
    """Remove a member from a project.

    Example: rxctl project member rm --project alpha rxbob
    """
    name = choose_project(client, project)
    answer = client.request("DELETE", routes.path(routes.PROJECT_MEMBER, name, user))
    _members_answer(answer, json_, f"Removed {user} from {name}.")


@member.command("set-role", cls=ProjectNamedFirst)
@project_option
@click.argument("user")
@click.argument("role", metavar=ROLES)
@json_option
@click.pass_obj
@api_errors
def member_set_role(client: Client, project: str | None, user: str, role: str, json_: bool) -> None:
    """Change a member's role.

    Example: rxctl project member set-role --project alpha rxbob viewer
    """
    name = choose_project(client, project)
    answer = client.request("PATCH", routes.path(routes.PROJECT_MEMBER, name, user), {"role": role})
    _members_answer(answer, json_, f"{user} is now {role} in {name}.")


@project.command("label")
@project_option
@click.argument("pairs", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--rm", "remove", multiple=True, metavar="KEY", help="Remove this label (repeat).")
@json_option
@click.pass_obj
@api_errors
def label(
    client: Client,
    project: str | None,
    pairs: tuple[str, ...],
    remove: tuple[str, ...],
    json_: bool,
) -> None:
    """Set or remove a project's labels; keep=true keeps garbage collection away from its data.

    Shown by `rxctl status` and `rxctl project show`; `rxctl list --label KEY=VALUE` filters on
    them.

    Example: rxctl project label --project alpha keep=true team=vision --rm old
    """
    to_set = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="KEY=VALUE")
        to_set[key] = value
    if not to_set and not remove:
        raise click.UsageError("nothing to change; give KEY=VALUE pairs or --rm KEY")
    name = choose_project(client, project)
    answer = client.post(
        routes.path(routes.PROJECT_LABELS, name), {"set": to_set, "remove": list(remove)}
    )
    if json_:
        emit_json(answer)
        return
    labels = answer.get("labels") or {}
    echo(f"Project {answer['name']}: labels {render.label_text(labels) if labels else '(none)'}")
