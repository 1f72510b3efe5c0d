"""`rxctl image set` and `rxctl image pull`: choose the project's image, pull or refresh it."""

from __future__ import annotations

from typing import Any

import click

from rxslurm.cli import units
from rxslurm.cli.client import Client
from rxslurm.cli.common import api_errors, echo, emit_json, json_option, project_option
from rxslurm.cli.project_choice import choose_project
from rxslurm.cli.render import PENDING_NOTE, cell
from rxslurm.protocol import routes

# Beyond the wait rxd is asked for: its answer still has to come back.
ANSWER_MARGIN_S = 30.0
# rxd waits at most an hour for a pull before answering that it goes on in the background.
MAX_WAIT_S = 3600


@click.command(name="set")
@project_option
@click.argument("ref", metavar="REF")
@json_option
@click.pass_obj
@api_errors
def set_(client: Client, project: str | None, ref: str, json_: bool) -> None:
    """Make REF the project's image: a build, a file or a reference (manager+).

    REF is build:ID (a succeeded build), an absolute path on the nodes, or a reference
    (python:3.12-slim means docker://python:3.12-slim).

    A running container keeps its image until it is restarted (stop, then start); the restart
    keeps the overlay, so what was installed stays where it can (docs/images.md).

    Example: rxctl image set --project alpha python:3.12-slim
    """
    name = choose_project(client, project)
    answer = client.request("PUT", routes.path(routes.PROJECT_IMAGE, name), {"image": ref})
    if json_:
        emit_json(answer)
        return
    echo(f"{answer['project']}: image set to {cell(answer['image_set'])}")
    if answer.get("settings_pending"):
        echo(PENDING_NOTE)


@click.command()
@project_option
@click.option(
    "--refresh", is_flag=True, help="Ask the registry again which image the tag names now."
)
@click.option(
    "--timeout",
    type=units.SECONDS,
    metavar="DURATION",
    default="10m",
    show_default=True,
    help="Wait this long for the pull (90s, 10m, 2h); then it goes on in the background.",
)
@json_option
@click.pass_obj
@api_errors
def pull(client: Client, project: str | None, refresh: bool, timeout: int, json_: bool) -> None:
    """Pull the project's image reference now, or with --refresh its tag anew (manager+).

    With --refresh, rxd asks the registry which image the tag names now; a tag that moved is
    pulled, and the next start runs it (the overlay is kept).

    Example: rxctl image pull --project alpha --refresh
    """
    name = choose_project(client, project)
    wait_s = min(timeout, MAX_WAIT_S)
    client.timeout = max(client.timeout, wait_s + ANSWER_MARGIN_S)
    answer: dict[str, Any] = client.post(
        routes.path(routes.PROJECT_IMAGE_PULL, name), {"refresh": refresh, "wait_s": wait_s}
    )
    if json_:
        emit_json(answer)
        return
    if answer["pulling"]:
        echo(f"{answer['project']}: still pulling {cell(answer['image'])} in the background")
        return
    digest = f" ({cell(answer['digest'])})" if answer.get("digest") else ""
    echo(f"{answer['project']}: {cell(answer['image'])}{digest} is pulled")
    if answer.get("settings_pending"):
        echo(PENDING_NOTE)
