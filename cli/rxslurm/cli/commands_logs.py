"""`rxctl logs`: the container's output (its holder job's: the holder's and Apptainer's messages).

rxd answers a piece of one job's output at a time (the last 64 KiB, or from an offset on); `-f`
asks again from where the last piece ended, once a second, until the job ends. Plain requests,
so following works the same over the local socket and the network door.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import click

from rxslurm.cli import render
from rxslurm.cli.client import Client
from rxslurm.cli.common import api_errors, echo, emit_json, json_option, project_option
from rxslurm.cli.project_choice import choose_project
from rxslurm.cli.units import SECONDS
from rxslurm.protocol import routes

POLL_S = 1.0

# (job or None for the current one, offset or None for the end) -> rxd's answer
Fetch = Callable[[int | None, int | None], Mapping[str, Any]]


def logs_route(
    project: str,
    job: int | None = None,
    offset: int | None = None,
    instance: str | None = None,
    service: bool = False,
) -> str:
    pairs = (("job", job), ("offset", offset), ("instance", instance), ("service", service or None))
    query = {k: (1 if v is True else v) for k, v in pairs if v is not None}
    route = routes.path(routes.PROJECT_LOGS, project)
    return route + (f"?{urlencode(query)}" if query else "")


def jobs_since(jobs: Sequence[Mapping[str, Any]], seconds: int, now: datetime) -> list[int]:
    """The jobs (oldest first) that still ran within the last `seconds`: not ended, or ended
    since then."""
    cutoff = now - timedelta(seconds=seconds)
    chosen = []
    for job in jobs:
        ended = job.get("ended_at")
        if ended is None or _moment(str(ended)) >= cutoff:
            chosen.append(int(job["job_id"]))
    return sorted(chosen)


def _moment(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.max.replace(tzinfo=UTC)  # unreadable: rather shown than hidden


def pieces(
    fetch: Fetch, first: Mapping[str, Any], follow: bool, sleep: Callable[[float], None]
) -> Iterator[Mapping[str, Any]]:
    """`first`, then (following) each next piece of the same job until it ends and all of its
    output was read."""
    answer = first
    job = int(answer["job_id"])
    while True:
        yield answer
        if not follow:
            return
        if answer["end"] >= answer["size"]:
            if not answer["live"]:
                return
            sleep(POLL_S)
        answer = fetch(job, int(answer["end"]))


def cut_note(answer: Mapping[str, Any]) -> str | None:
    """What stderr says about the first piece of a job: cut, or no output at all."""
    if answer.get("exec"):
        return capped_note(answer, f"command {answer['exec']}")
    job = answer["job_id"]
    if answer.get("service"):
        if answer.get("cleaned"):
            return f"job {job}'s service output was cleaned with its log"
        return capped_note(answer, f"job {job}'s service")
    if answer.get("instance"):
        what = f"job {job}'s instance log ({answer['instance']})"
        if answer.get("missing"):
            return f"{what} was cleaned" if answer.get("cleaned") else f"{what} is empty or absent"
        if answer["start"] > 0:
            return f"the first {answer['start']} bytes of {what} are not shown"
        return None
    if answer.get("cleaned"):
        return f"job {job}'s output was cleaned: rxd keeps only the container's newest jobs' logs"
    if answer.get("missing"):
        return (
            f"job {job} has written no output yet"
            if answer["live"]
            else f"job {job} left no output"
        )
    if answer["start"] > 0:
        return f"the first {answer['start']} bytes of job {job}'s output are not shown"
    return None


def capped_note(answer: Mapping[str, Any], what: str) -> str | None:
    """The same for a capped output (a detached command's, a service's): kept as a file and one
    older part, and older output dropped past that (rxd.toml's containers.output_cap_mb)."""
    if answer.get("missing"):
        return f"{what} has written no output" + (" yet" if answer["live"] else "")
    if answer.get("dropped"):
        return f"older output of {what} was dropped (its output is capped); the newest is shown"
    if answer["start"] > 0 or answer.get("older_unshown"):
        return f"the start of {what}'s output is not shown"
    return None


def end_note(answer: Mapping[str, Any]) -> str:
    """What -f says when the followed output ends."""
    if answer.get("exec"):
        code = answer.get("exit_code")
        how = "has ended" if code is None else f"exited with status {code}"
        return f"command {answer['exec']} {how}"
    return f"job {answer['job_id']} has ended; the container is {answer['state']}"


def show(
    fetch: Fetch,
    first: Mapping[str, Any],
    follow: bool,
    write: Callable[[str], None],
    note: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> Mapping[str, Any]:
    """Print a job's output (and follow it); the last answer."""
    said = cut_note(first)
    if said:
        note(said)
    last = first
    for answer in pieces(fetch, first, follow, sleep):
        if answer["text"]:
            write(str(answer["text"]))
        last = answer
    if follow:
        note(end_note(last))
    return last


def _write(text: str) -> None:
    # rxd sent text safe for a terminal; it is escaped here again all the same (tabs expanded,
    # as safe_text would show them escaped).
    click.echo(render.safe_text(text.expandtabs()), nl=False)


def _note(text: str) -> None:
    echo(text, err=True)


@click.command()
@project_option
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Keep printing new output until the job ends (Ctrl-C stops).",
)
@click.option(
    "--since",
    type=SECONDS,
    metavar="DURATION",
    help="The output of every job that ran within DURATION (90s, 30m, 2h, 1d), oldest first.",
)
@click.option("--job", type=click.IntRange(min=1), metavar="ID", help="An earlier job's output.")
@click.option(
    "--instance",
    type=click.Choice(["out", "err"]),
    help="Apptainer's log of the job's instance instead: what the instance itself wrote to "
    "stdout (out) or stderr (err).",
)
@click.option(
    "--service",
    is_flag=True,
    help="The project's service's output instead (its newest part: older output is dropped "
    "past a cap).",
)
@click.option(
    "exec_id",
    "--exec",
    metavar="ID",
    help="A detached command's output (`rxctl exec --detach` printed its id; `rxctl ps` lists "
    "them).",
)
@json_option
@click.pass_obj
@api_errors
def logs(
    client: Client,
    project: str | None,
    follow: bool,
    since: int | None,
    job: int | None,
    instance: str | None,
    service: bool,
    exec_id: str | None,
    json_: bool,
) -> None:
    """Show the container's output: its holder job's, with Apptainer's messages.

    The current job's (else the latest one's) last 64 KiB; `rxctl history` names earlier jobs.
    With --instance, Apptainer's log of the job's instance instead; with --service, the output
    of the project's service; with --exec, a detached command's output.

    Example: rxctl logs --project alpha --follow
    """
    if json_ and follow:
        raise click.UsageError("--json and --follow cannot be used together")
    if since is not None and job is not None:
        raise click.UsageError("--since and --job cannot be used together")
    if exec_id is not None and (
        since is not None or job is not None or instance is not None or service
    ):
        raise click.UsageError("--exec cannot be used with --since, --job, --instance or --service")
    if service and instance is not None:
        raise click.UsageError("--service and --instance cannot be used together")
    name = choose_project(client, project)
    if exec_id is not None:
        _show_command(client, name, exec_id, follow, json_)
        return

    def fetch(job_id: int | None, offset: int | None) -> Mapping[str, Any]:
        answer: Mapping[str, Any] = client.get(logs_route(name, job_id, offset, instance, service))
        return answer

    first = fetch(job, None)
    chosen = [int(first["job_id"])]
    if since is not None:
        chosen = jobs_since(first["jobs"], since, datetime.now(UTC))
        if not chosen:
            if json_:
                emit_json({"project": name, "logs": []})
            else:
                _note(f"no job of {name} ran in that time")
            return
    answers = [first if j == first["job_id"] else fetch(j, None) for j in chosen]
    if json_:
        emit_json(answers[0] if since is None else {"project": name, "logs": answers})
        return
    try:
        for number, answer in enumerate(answers, 1):
            if since is not None:
                click.echo(f"==> job {answer['job_id']} <==")
            show(fetch, answer, follow and number == len(answers), _write, _note)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _show_command(client: Client, project: str, command: str, follow: bool, json_: bool) -> None:
    """A detached command's output, as a job's: the last 64 KiB, and with -f what follows."""

    def fetch(_job: int | None, offset: int | None) -> Mapping[str, Any]:
        route = routes.path(routes.PROJECT_COMMAND_OUTPUT, project, command)
        answer: Mapping[str, Any] = client.get(
            route + (f"?{urlencode({'offset': offset})}" if offset is not None else "")
        )
        return answer

    first = fetch(None, None)
    if json_:
        emit_json(first)
        return
    try:
        show(fetch, first, follow, _write, _note)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
