"""`rxctl run`: a command of the caller's own job (or salloc, or none) in a project's container
environment, in place of rxctl itself.

rxd answers the project's batch plan after checking that the caller may run in the project;
`rxslurm.protocol.batch_plan` turns it into the `apptainer exec` argv, and rxctl replaces itself
with it (execve: no process stays between Slurm and the command, so signals, the exit status and
the step's accounting are the command's). The SPANK plugin (slurm/spank/rx_spank.c) hands every
task of a `--rx-project` step to this. Standard library only: it runs once per task.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

from rxslurm.cli.client import ApiError, Client, ClientError
from rxslurm.cli.render import safe
from rxslurm.protocol import batch_plan, routes

# Every task of a step asks at once, and rxd caps the connections of one caller (a uid; a node's
# address on the network door): a task turned away for that asks again, after a short random
# wait that grows, for this long at most, before it fails.
BUSY_CODE = "too_many_connections"
BUSY_RETRY_S = 30.0


def plan_for(
    client: Client, project: str, sleep: Callable[[float], None] = time.sleep
) -> batch_plan.BatchPlan:
    """The project's batch plan from rxd; ClientError when rxd refuses or answers nonsense."""
    route = routes.path(routes.PROJECT_BATCH_PLAN, project)
    waited, pause = 0.0, 0.05
    while True:
        try:
            answer = client.get(route)
            break
        except ApiError as exc:
            if exc.code != BUSY_CODE or waited >= BUSY_RETRY_S:
                raise
        import random  # only when turned away: it costs every task's start-up otherwise

        delay = random.uniform(pause / 2, pause)  # noqa: S311 - spreading retries, not secrets
        sleep(delay)
        waited += delay
        pause = min(pause * 2, 2.0)
    try:
        return batch_plan.parse(answer)
    except batch_plan.BadPlan as exc:
        raise ClientError(str(exc)) from None


def no_snapshot_note(plan: batch_plan.BatchPlan) -> str:
    return (
        f"rxctl run: {plan.project} has no snapshot of its container yet; "
        "running in its bare image (software installed in the container is missing)"
    )


def run(
    client: Client, project: str, command: Sequence[str], env: Mapping[str, str] | None = None
) -> NoReturn:
    """Replace this process with `command` in the project's environment. Returns only by
    raising ClientError (rxd refused, or the program cannot be run)."""
    env = dict(os.environ if env is None else env)
    plan = plan_for(client, project)
    if plan.snapshot is None:
        sys.stderr.write(safe(no_snapshot_note(plan)) + "\n")
        sys.stderr.flush()
    argv = batch_plan.exec_argv(plan, command, gpus=batch_plan.granted_gpus(env))
    try:
        # The program named by rxd (an absolute path), else Apptainer on the caller's PATH.
        os.execvpe(argv[0], argv, batch_plan.step_env(plan, env))  # noqa: S606 - argv list, no shell
    except OSError as exc:
        raise ClientError(f"cannot run {argv[0]}: {exc.strerror}") from None
