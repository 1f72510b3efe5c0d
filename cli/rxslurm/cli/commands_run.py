"""`rxctl run`: a command of your own job in a project's container environment."""

from __future__ import annotations

import click

from rxslurm.cli import batch_run
from rxslurm.cli.client import Client
from rxslurm.cli.commands_exec import session_errors
from rxslurm.cli.common import project_option
from rxslurm.cli.project_choice import choose_project


@click.command("run", context_settings={"allow_interspersed_args": False})
@project_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
@session_errors
def run(client: Client, project: str | None, command: tuple[str, ...]) -> None:
    """Run a command here, as you, in a project's container environment; exits with its status.

    Meant for the steps of your own Slurm jobs (`srun rxctl run --project P -- CMD` in a batch
    script or salloc), for sites without the `--rx-project` plugin; it works outside a job too.
    The command runs in the project's image with the newest snapshot of its container's software
    (read-only), the workspace at /workspace, the GPUs Slurm gave the job, and the working
    folder and environment it was started with. rxctl replaces itself with the command, so
    signals and the exit status are the command's. It does not wake the container: it runs
    beside it. When rxctl itself fails (not a member, no such project, rxd unreachable) it
    exits 125, as `rxctl exec` does.

    In a batch script: srun rxctl run --project alpha -- python train.py

    Example: rxctl run --project alpha -- python train.py --epochs 3
    """
    batch_run.run(client, choose_project(client, project), command)
