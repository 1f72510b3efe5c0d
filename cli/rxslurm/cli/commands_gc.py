"""`rxctl gc` and `rxctl admin gc`: garbage collection, its dry run and what it freed."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import click

from rxslurm.cli import render
from rxslurm.cli.client import Client
from rxslurm.cli.common import api_errors, echo_lines, emit_json, json_option
from rxslurm.cli.render import size_text
from rxslurm.cli.units import SECONDS
from rxslurm.protocol import routes

F = Callable[..., Any]


def gc_options(func: F) -> F:
    func = click.option(
        "--older-than",
        "older_than_s",
        type=SECONDS,
        default="30d",
        show_default=True,
        metavar="AGE",
        help="Images, backups and quarantined folders go only when older (90s, 10m, 2h, 30d).",
    )(func)
    func = click.option("--dry-run", is_flag=True, help="Only list what would go; change nothing.")(
        func
    )
    return json_option(click.pass_obj(api_errors(func)))


def gc_lines(answer: Mapping[str, Any]) -> list[str]:
    items: Sequence[Mapping[str, Any]] = answer.get("items", [])
    verb = "would free" if answer.get("dry_run") else "freed"
    lines = render.table(
        ["KIND", "OWNER", "PROJECT", "SIZE", "NAME"],
        [
            [i["kind"], i["owner"], i.get("project") or "-", size_text(i["bytes"]), i["name"]]
            for i in items
        ],
        empty="nothing to collect",
    )
    if items:
        lines.append(f"{len(items)} item(s); {verb} {size_text(answer.get('bytes', 0))}")
    for failure in answer.get("failed", []):
        where = failure.get("project") or failure.get("kind")
        lines.append(f"not collected ({where}): {failure.get('error')}")
    return lines


# rxd answers once everything is removed: a big quarantined folder or a slow shared filesystem
# takes longer than a request's usual minute.
GC_WAIT_S = 1800.0


def run_gc(client: Client, route: str, dry_run: bool, older_than_s: int, json_: bool) -> None:
    client.timeout = max(client.timeout, GC_WAIT_S)
    answer = client.post(route, {"dry_run": dry_run, "older_than_s": older_than_s})
    if json_:
        emit_json(answer)
        return
    echo_lines(gc_lines(answer))
    if answer.get("failed"):
        # Some went, some did not: a script must see it.
        raise SystemExit(1)


@click.command("gc")
@gc_options
def gc(client: Client, dry_run: bool, older_than_s: int, json_: bool) -> None:
    """Remove what your own projects' containers no longer need.

    Overlay backups (a reset's or an import's) and built images no project names, older than
    --older-than; holder job logs and status files beyond those kept; overlay snapshots beyond
    the newest kept. A project labelled keep=true is left alone.

    Example: rxctl gc --dry-run --older-than 7d
    """
    run_gc(client, routes.GC, dry_run, older_than_s, json_)


@click.command("gc")
@gc_options
def admin_gc(client: Client, dry_run: bool, older_than_s: int, json_: bool) -> None:
    """Remove what the deployment no longer needs (admins).

    Everything `rxctl gc` removes, in every project's container, and pulled images no project
    names and deleted projects' quarantined folders, older than --older-than. A project labelled
    keep=true is left alone.

    Example: rxctl admin gc --dry-run
    """
    run_gc(client, routes.ADMIN_GC, dry_run, older_than_s, json_)
