"""`rxctl history`: a project's timeline: its container's states with reasons, who did what."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import click

from rxslurm.cli import render
from rxslurm.cli.client import Client
from rxslurm.cli.common import echo, list_command, print_list, project_option
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


def gpu_usage_line(usage: Mapping[str, Any]) -> str:
    """One line: the project's GPU-hours from Slurm's accounting, and each user's."""
    if "unavailable" in usage:
        return f"GPU-hours: unknown ({render.cell(usage['unavailable'])})"
    by_user = usage.get("by_user")
    users = (
        ", ".join(f"{render.cell(u)} {_hours(h)}" for u, h in by_user.items())
        if isinstance(by_user, Mapping)
        else ""
    )
    skipped = usage.get("skipped")
    return (
        f"GPU-hours: {_hours(usage.get('gpu_hours'))} over {render.cell(usage.get('jobs'))} "
        f"job(s)"
        + (f" ({users})" if users else "")
        + (
            f"; {skipped} unreadable sacct record(s) left out"
            if isinstance(skipped, int) and skipped
            else ""
        )
    )


def _hours(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "-"


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

    A last line sums the GPU-hours of the container's jobs from Slurm's accounting (elapsed time
    × allocated GPUs), for the project and per Slurm user.

    Example: rxctl history --project alpha --limit 20
    """
    name = choose_project(client, project)
    route = routes.path(routes.PROJECT_HISTORY, name)
    if limit is not None:
        route += f"?limit={limit}"
    answer = client.get(route)
    print_list(answer, "events", history_lines, json_, shape)
    # The summary is for people: a --noheader or --format table stays rows only.
    usage = answer.get("gpu_usage")
    if not json_ and not shape.noheader and shape.columns is None and isinstance(usage, Mapping):
        echo(gpu_usage_line(usage))
