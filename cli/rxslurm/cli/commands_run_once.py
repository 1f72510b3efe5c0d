"""`rxctl run-once`: one command as a Slurm job of its own in a project's image, its output
streamed here, rxctl's exit status the command's.

Named beside `rxctl run`, which runs a command in the project's environment inside the caller's
own job, as the caller: run-once asks for a new job, run as the project's runtime identity, that
runs the command once and leaves nothing behind.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import click

from rxslurm.cli import render, units
from rxslurm.cli.client import Client
from rxslurm.cli.commands_exec import SessionFailed, session_errors
from rxslurm.cli.commands_logs import POLL_S
from rxslurm.cli.common import echo, project_option
from rxslurm.cli.project_choice import choose_project
from rxslurm.protocol import routes

# The one-shot's states in which its job may still write output.
ACTIVE = ("queued", "running")
# What rxctl exits with when the command did not run to its own exit (rxctl exec's 125).
OWN_FAILURE = 125
INTERRUPTED = 130


@click.command("run-once", context_settings={"allow_interspersed_args": False})
@project_option
@click.option("--gpus", type=click.IntRange(0, 64), help="GPUs for the command (default: none).")
@click.option("--cpus", type=click.IntRange(1, 1024), help="CPUs (default: the project's).")
@click.option("--mem", "mem_mb", type=units.MEMORY, metavar="SIZE", help="Memory: 16G, 512M.")
@click.option("--time", "time_limit_min", type=units.MINUTES, metavar="TIME", help="Time limit.")
@click.option("--partition", metavar="PARTITION", help="Where it runs (default: the project's).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
@session_errors
def run_once(
    client: Client,
    project: str | None,
    gpus: int | None,
    cpus: int | None,
    mem_mb: int | None,
    time_limit_min: int | None,
    partition: str | None,
    command: tuple[str, ...],
) -> None:
    """Run one command as a Slurm job of its own in a project's image; exits with its status.

    The job runs as the project's runtime identity, in the project's image with the newest
    snapshot of its container's software (read-only), the workspace at /workspace, and GPUs
    when --gpus asks for some. Its output (stdout and stderr together) is printed here as it
    comes; rxctl exits with the command's exit status, or 125 when rx-slurm, Slurm or
    Apptainer failed it (not allowed, over quota, out of time or memory, cancelled). Ctrl-C
    cancels the job. Nothing is left behind: no container instance, no quota held once the job
    ends, and its output is removed once printed. It counts against the project's quotas like
    the container. Managers and owners may run one.

    Unlike `rxctl run` (a step of your own job, as you), run-once asks Slurm for a new job.

    Example: rxctl run-once --project alpha --gpus 1 --time 90m -- python eval.py
    """
    name = choose_project(client, project)
    body: dict[str, Any] = {"command": list(command)}
    for key, value in (
        ("gpus", gpus),
        ("cpus", cpus),
        ("mem_mb", mem_mb),
        ("time_limit_min", time_limit_min),
        ("partition", partition),
    ):
        if value is not None:
            body[key] = value
    answer = client.post(routes.path(routes.ONE_SHOTS, name), body)
    one_shot = str(answer["id"])
    job = f"job {answer['job_id']}" if answer.get("job_id") else "its job"
    echo(f"rxctl: one-shot {one_shot} of {name} submitted as {job}", err=True)

    def fetch(offset: int) -> Mapping[str, Any]:
        route = routes.path(routes.ONE_SHOT_OUTPUT, name, one_shot)
        result: Mapping[str, Any] = client.get(f"{route}?{urlencode({'offset': offset})}")
        return result

    try:
        last = follow(fetch, lambda text: click.echo(text, nl=False), time.sleep)
    except KeyboardInterrupt:
        cancelled = client.post(routes.path(routes.ONE_SHOT_CANCEL, name, one_shot), {})
        job_id = cancelled.get("job_id")
        echo(
            f"rxctl: interrupted: cancelled one-shot {one_shot}"
            + (f" (job {job_id})" if job_id else ""),
            err=True,
        )
        sys.exit(INTERRUPTED)
    sys.exit(exit_status(last))


def follow(
    fetch: Callable[[int], Mapping[str, Any]],
    write: Callable[[str], None],
    sleep: Callable[[float], None],
) -> Mapping[str, Any]:
    """Print the output from its start until the one-shot has ended and all of it was read;
    the last answer."""
    offset = 0
    while True:
        answer = fetch(offset)
        if answer["text"]:
            write(render.safe_text(str(answer["text"])))
        offset = int(answer["end"]) if answer["job_id"] is not None else 0
        ended = answer["state"] not in ACTIVE
        if ended and offset >= int(answer["size"]):
            return answer
        if offset >= int(answer["size"]):
            sleep(POLL_S)


def exit_status(answer: Mapping[str, Any]) -> int:
    """The command's own exit status; for a one-shot that did not exit on its own, 125 with
    why on stderr."""
    if answer["state"] == "exited" and isinstance(answer.get("exit_code"), int):
        return int(answer["exit_code"])
    reason = answer.get("reason") or f"the one-shot is {answer['state']}"
    raise SessionFailed(render.safe(f"one-shot {answer['id']} {answer['state']}: {reason}"))
