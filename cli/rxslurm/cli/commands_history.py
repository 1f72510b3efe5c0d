"""`rxctl history`: a project's timeline: its container's states with reasons, who did what."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import click

from rxslurm.cli import render
from rxslurm.cli.client import Client
from rxslurm.cli.common import list_command, print_list, project_option
from rxslurm.cli.project_choice import choose_project
from rxslurm.protocol import routes


def what(event: Mapping[str, Any]) -> tuple[str, Any, Any]:
    """(what happened, its job, the rest) of one event, as the table shows them."""
    action = str(event.get("action"))
    detail = dict(event.get("detail") or {})
    job = detail.pop("job_id", None)
    if action == "container.state":
        moved = f"{render.cell(detail.pop('from', None))} -> {render.cell(detail.pop('to', None))}"
        reason = detail.pop("reason", None)
        rest = render.detail(detail) if detail else ""
        return moved, job, " ".join(render.cell(x) for x in (reason, rest) if x) or None
    kind, _, verb = action.partition(".")
    return (
        (verb if kind in ("project", "container") and verb else action),
        job,
        render.detail(detail),
    )


def history_lines(events: Sequence[Mapping[str, Any]], shape: render.Shape) -> list[str]:
    rows = []
    for event in events:
        happened, job, rest = what(event)
        rows.append((render.when(event.get("at")), event.get("actor"), happened, job, rest))
    return render.table(("AT", "BY", "WHAT", "JOB", "DETAIL"), rows, shape, empty="no history")


@click.command()
@project_option
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    metavar="N",
    help="The newest N events (default 50).",
)
@list_command
def history(
    client: Client, project: str | None, limit: int | None, json_: bool, shape: render.Shape
) -> None:
    """Show the project's timeline: its container's states and reasons, who did what, job ids.

    Example: rxctl history --project alpha --limit 20
    """
    name = choose_project(client, project)
    route = routes.path(routes.PROJECT_HISTORY, name)
    if limit is not None:
        route += f"?limit={limit}"
    print_list(client.get(route), "events", history_lines, json_, shape)
