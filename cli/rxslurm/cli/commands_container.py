"""`rxctl enable/start/stop/disable/retry/status/list/snapshot/reset`: a project's container."""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import urlencode

import click

from rxslurm.cli import exec_client, render, session, units
from rxslurm.cli.client import Client, ClientError
from rxslurm.cli.common import (
    api_errors,
    echo,
    emit_json,
    json_option,
    list_command,
    print_list,
    project_option,
)
from rxslurm.cli.project_choice import choose_project
from rxslurm.cli.render import status_lines
from rxslurm.protocol import routes

# A reset or a fresh start may first wait up to two minutes for the container to stop, then make
# a new overlay or remove a home: longer than a request's usual minute.
STARTING_OVER_S = 600.0


def _act(client: Client, project: str | None, action: str, fresh: bool = False) -> dict[str, Any]:
    name = choose_project(client, project)
    if fresh:
        client.timeout = max(client.timeout, STARTING_OVER_S)
    route = routes.path(routes.CONTAINER_ACTION, name, action) + ("?fresh=1" if fresh else "")
    answer: dict[str, Any] = client.post(route)
    return answer


def _lifecycle(action: str, summary: str, example: str, done: str) -> click.Command:
    @click.command(name=action, help=f"{summary}\n\nExample: {example}")
    @project_option
    @json_option
    @click.pass_obj
    @api_errors
    def command(client: Client, project: str | None, json_: bool) -> None:
        _show(_act(client, project, action), done, json_)

    return command


def _show(result: dict[str, Any], done: str, json_: bool) -> None:
    if json_:
        emit_json(result)
        return
    reason = f" ({result['reason']})" if result.get("reason") else ""
    echo(f"{result['project']}: {done}; now {result['state']}{reason}")


def _waiting(
    action: str, summary: str, example: str, done: str, fresh: bool = False
) -> click.Command:
    """A command that starts the container and, with --wait, waits until it runs: the progress
    line, --timeout and Ctrl-C of `rxctl exec`'s wake, over the same exec socket. ``fresh``: it
    takes --fresh (start)."""

    @click.command(
        name=action,
        help=f"{summary}\n\nWith --wait, return once the container runs, showing on stderr its "
        "state, what it waits for and for how long; Ctrl-C stops waiting (exit 130) and says "
        f"whether it keeps starting.\n\nExample: {example}",
    )
    @project_option
    @click.option("--wait", is_flag=True, help="Return once the container runs.")
    @click.option(
        "--timeout",
        type=units.SECONDS,
        metavar="DURATION",
        help="With --wait: give up after this long (90s, 10m, 2h, or [D-]H:M:S as sbatch).",
    )
    @json_option
    @click.pass_obj
    @api_errors
    def command(
        client: Client,
        project: str | None,
        wait: bool,
        timeout: int | None,
        json_: bool,
        fresh: bool = False,
    ) -> None:
        if timeout is not None and not wait:
            raise click.UsageError("--timeout needs --wait")
        result = _act(client, project, action, fresh)
        if not wait:
            _show(result, done, json_)
            return
        name = str(result["project"])
        try:
            code = session.run_session(
                client, name, {"wait": True, "timeout": timeout}, verb="waiting for"
            )
        except exec_client.ExecError as exc:
            raise click.ClickException(render.safe(str(exc))) from None
        if code:
            sys.exit(code)  # Ctrl-C: rxd's words are on stderr already
        _show(client.get(routes.path(routes.CONTAINER_STATUS, name)), done, json_)

    if fresh:
        return click.option(
            "--fresh",
            is_flag=True,
            help="Owner: recreate its instance state and home on the same overlay and "
            "workspace (an awake container is stopped first).",
        )(command)
    return command


enable = _waiting(
    "enable",
    "Create the project's container (overlay, image) and start it (owner).",
    "rxctl enable --project alpha",
    "enabled",
)
start = _waiting(
    "start",
    "Wake the project's container (manager+).",
    "rxctl start --project alpha --wait --timeout 1h",
    "started",
    fresh=True,
)
# The roles that may stop a container (rxd decides; `--all` only skips the others' containers),
# and the states a stop acts on (STOPPING is on its way already).
STOPPERS = frozenset({"owner", "manager"})
STOPPABLE = frozenset({"waiting", "starting", "running"})


@click.command()
@project_option
@click.option(
    "--force", is_flag=True, help="Stop even while exec/shell sessions or detached commands run."
)
@click.option(
    "--all",
    "all_",
    is_flag=True,
    help="Stop every awake or queued container of your projects that you may stop.",
)
@json_option
@click.pass_obj
@api_errors
def stop(client: Client, project: str | None, force: bool, all_: bool, json_: bool) -> None:
    """Stop the container; its overlay and workspace are kept (manager+).

    Batch steps get a snapshot of the overlay once it has stopped. A container with open
    exec/shell sessions or running detached commands (`rxctl ps`) is not stopped: rxd names
    them; --force stops it anyway, ending them.

    Example: rxctl stop --project alpha --force
    """
    body = {"force": True} if force else None
    if not all_:
        name = choose_project(client, project)
        _show(
            client.post(routes.path(routes.CONTAINER_ACTION, name, "stop"), body), "stopping", json_
        )
        return
    if project is not None:
        raise click.UsageError("--all stops every container of yours; leave out --project")
    mine = client.get(routes.CONTAINERS)["containers"]
    results: list[dict[str, Any]] = []
    failed = 0
    for row in mine:
        if row["role"] not in STOPPERS or row["state"] not in STOPPABLE:
            continue
        try:
            result = client.post(routes.path(routes.CONTAINER_ACTION, row["project"], "stop"), body)
        except ClientError as exc:
            failed += 1
            results.append({"project": row["project"], "error": str(exc)})
            if not json_:
                echo(f"{row['project']}: not stopped: {exc}")
            continue
        results.append(result)
        if not json_:
            _show(result, "stopping", False)
    if json_:
        emit_json({"containers": results})
    elif not results:
        echo("No awake or queued container of yours to stop.")
    if failed:
        sys.exit(1)


disable = _lifecycle(
    "disable",
    "Stop the container and delete its overlay; the workspace stays (owner).",
    "rxctl disable --project alpha",
    "disabled",
)
retry = _lifecycle(
    "retry", "Start again after an error (owner).", "rxctl retry --project alpha", "retrying"
)


@click.command()
@project_option
@json_option
@click.pass_obj
@api_errors
def status(client: Client, project: str | None, json_: bool) -> None:
    """Show the container's state, job, node, GPUs, uptime, usage and last error.

    An awake container also shows its open sessions and detached commands, and how long until
    it sleeps when idle and until its job's time limit (rxd's best guess).

    Example: rxctl status --project alpha
    """
    name = choose_project(client, project)
    result = client.get(routes.path(routes.CONTAINER_STATUS, name))
    if json_:
        emit_json(result)
        return
    for line in status_lines(result):
        echo(line)


@click.command()
@project_option
@json_option
@click.pass_obj
@api_errors
def snapshot(client: Client, project: str | None, json_: bool) -> None:
    """Snapshot the overlay for batch steps, now or when the container next sleeps (manager+).

    Batch steps (`--rx-project`, `rxctl run`) mount the newest snapshot read-only; rxd also takes
    one whenever the container goes to sleep. `rxctl status` says which one steps get.

    Example: rxctl snapshot --project alpha
    """
    name = choose_project(client, project)
    result = client.post(routes.path(routes.PROJECT_SNAPSHOT, name))
    if json_:
        emit_json(result)
        return
    echo(str(result["message"]))


@click.command()
@project_option
@json_option
@click.pass_obj
@api_errors
def reset(client: Client, project: str | None, json_: bool) -> None:
    """Start the container over with a new, empty overlay (owner); it stays asleep.

    What was installed in the container goes; the workspace stays. An awake container is
    stopped first. The old overlay is kept in
    the container's folder as overlay.img.before-reset-TIME until `rxctl gc` removes it (after
    --older-than, 30 days by default).

    Example: rxctl reset --project alpha
    """
    name = choose_project(client, project)
    client.timeout = max(client.timeout, STARTING_OVER_S)
    result = client.post(routes.path(routes.PROJECT_RESET, name))
    if json_:
        emit_json(result)
        return
    echo(
        f"Reset {result['project']}: a new, empty overlay; the old one is kept as "
        f"{result['backup']} until rxctl gc removes it."
    )


@click.command(name="list")
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="Only projects with this label (repeat: with every one).",
)
@list_command
def list_(client: Client, json_: bool, shape: render.Shape, labels: tuple[str, ...]) -> None:
    """List the containers of your projects.

    Example: rxctl list --noheader --format project,state --label team=vision
    """
    for label in labels:
        if "=" not in label:
            raise click.BadParameter(f"{label!r} is not KEY=VALUE", param_hint="--label")
    route = routes.CONTAINERS
    if labels:
        route += "?" + urlencode([("label", label) for label in labels])
    print_list(client.get(route), "containers", render.container_list_lines, json_, shape)


COMMANDS = (enable, start, stop, disable, retry, status, list_, snapshot, reset)
