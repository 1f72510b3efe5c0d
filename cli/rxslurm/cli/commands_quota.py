"""`rxctl admin quota ...`, `rxctl admin containers`, `rxctl admin stop`: quotas and the fleet."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
from rxslurm.protocol import routes

# Limit key, in-use key, column heading.
LIMITS = (
    ("max_gpus", "gpus", "GPUS"),
    ("max_cpus", "cpus", "CPUS"),
    ("max_mem_mb", "mem_mb", "MEM MB"),
    ("max_containers", "containers", "CONTAINERS"),
)


def scope_words(quota: Mapping[str, Any]) -> str:
    if quota.get("scope") == "deployment":
        return "the deployment"
    return f"{quota.get('scope')} {quota.get('subject')}"


def usage(used: Any, limit: Any) -> str:
    """ "1/2": in use of the limit; "1/-" when there is no limit of that kind."""
    return f"{render.cell(used if used is not None else 0)}/{limit or '-'}"


def quota_lines(
    quotas: Sequence[Mapping[str, Any]], shape: render.Shape = render.PEOPLE
) -> list[str]:
    return render.table(
        ("ID", "PARTITION", "SCOPE", "SUBJECT", *(h for _, _, h in LIMITS), "MIRROR", "HOLDERS"),
        [
            (
                q.get("id"),
                q.get("partition"),
                q.get("scope"),
                q.get("subject") or "-",
                *(
                    usage((q.get("in_use") or {}).get(used), q.get(limit))
                    for limit, used, _ in LIMITS
                ),
                bool(q.get("mirror_qos")),
                q.get("holders") or [],
            )
            for q in quotas
        ],
        shape,
        empty="no quotas; set one with: rxctl admin quota set --partition P --gpus N",
    )


def limit_words(quota: Mapping[str, Any]) -> str:
    words = [
        f"{quota[key]} {label}"
        for key, label in (
            ("max_gpus", "GPUs"),
            ("max_cpus", "CPUs"),
            ("max_mem_mb", "MB of memory"),
            ("max_containers", "running containers"),
        )
        if quota.get(key)
    ]
    return ", ".join(words) or "no limit"


def mirror_lines(entries: Sequence[Mapping[str, Any]], quota_id: Any = None) -> list[str]:
    """What `qos_mirror.sync` reported about `quota_id` and about no quota (removed QOSes,
    Slurm not answering), one line per QOS. `--json` shows the rest too."""
    lines = []
    for e in entries:
        if e.get("quota_id") not in (None, quota_id):
            continue
        which = f"quota {e['quota_id']}" if e.get("quota_id") is not None else "QOS mirrors"
        if e.get("error"):
            target = f" (QOS {e['qos']})" if e.get("qos") else ""
            lines.append(f"{which}{target}: Slurm QOS not updated: {e['error']}")
        elif e.get("skipped"):
            lines.append(f"{which}: not mirrored into Slurm: {e['skipped']}")
        elif e.get("removed"):
            users = (
                f" (restored the associations of {', '.join(e['users'])})" if e.get("users") else ""
            )
            lines.append(f"removed Slurm QOS {e['qos']}{users}")
            for kept in e.get("kept_associations") or []:
                lines.append(f"  kept association {kept}: jobs still run under it")
        else:
            limits = render.cell(e.get("limits") or {})
            lines.append(f"{which}: Slurm QOS {e.get('qos')} ({limits}), {e.get('attached')}")
    return lines


def usage_cells(usage: Any) -> tuple[str, str, str]:
    """CPUs busy now, memory in use and GPUs held, as `rxctl status` measures them; "-" for
    what is not known (not running, Slurm did not say, the first sample of CPU)."""
    if not isinstance(usage, Mapping):
        return ("-", "-", "-")
    gpus = usage.get("gpus")
    held = str(gpus) if isinstance(gpus, int) and not isinstance(gpus, bool) else "-"
    if "unavailable" in usage:
        return ("-", "-", held)
    busy = usage.get("cpus_busy")
    cpu = f"{busy:g}" if isinstance(busy, int | float) and not isinstance(busy, bool) else "-"
    return (cpu, render.size_text(usage.get("memory_bytes")), held)


def container_lines(
    containers: Sequence[Mapping[str, Any]], shape: render.Shape = render.PEOPLE
) -> list[str]:
    return render.table(
        (
            "PROJECT",
            "USER",
            "PARTITION",
            "STATE",
            "GPUS",
            "CPUS",
            "MEM MB",
            "JOB",
            "NODE",
            "AGE",
            "CPU BUSY",
            "MEM USED",
            "GPUS HELD",
            "REASON",
        ),
        [
            (
                c.get("project"),
                c.get("linux_user"),
                c.get("partition"),
                c.get("state"),
                c.get("gpus"),
                c.get("cpus"),
                c.get("mem_mb"),
                c.get("job_id"),
                c.get("node"),
                age(c.get("age_s")),
                *usage_cells(c.get("usage")),
                c.get("reason"),
            )
            for c in containers
        ],
        shape,
        empty="no container is starting, running or waiting",
    )


def age(seconds: Any) -> str:
    if not isinstance(seconds, int):
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@click.group("quota")
def quota() -> None:
    """Partition quotas: limits on GPUs, CPUs, memory and running containers.

    A quota applies on one partition to the whole deployment, one project, or one Linux user
    (the identity containers run as). A container that does not fit waits for resources, or is
    refused under `[quotas] policy = "reject"`.

    Example: rxctl admin quota set --partition gpu --gpus 4
    """


@quota.command("set")
@click.option("-p", "--partition", required=True, metavar="PARTITION", help="The Slurm partition.")
@click.option(
    "-P", "--project", metavar="PROJECT", help="Limit this project (default: the deployment)."
)
@click.option("--user", "linux_user", metavar="LINUX_USER", help="Limit this Linux user.")
@click.option("--gpus", type=int, default=0, metavar="N", help="Most GPUs at once (0: no limit).")
@click.option("--cpus", type=int, default=0, metavar="N", help="Most CPUs at once (0: no limit).")
@click.option(
    "--mem",
    "mem_mb",
    type=units.MEMORY,
    default=0,
    metavar="SIZE",
    help="Most memory: 64G, or MB as a number (0: none).",
)
@click.option(
    "--containers", type=int, default=0, metavar="N", help="Most running containers (0: none)."
)
@click.option(
    "--mirror/--no-mirror",
    default=False,
    help="Also write it into a Slurm QOS, so plain sbatch work obeys it (deployment and user).",
)
@json_option
@click.pass_obj
@api_errors
def set_(
    client: Client,
    partition: str,
    project: str | None,
    linux_user: str | None,
    gpus: int,
    cpus: int,
    mem_mb: int,
    containers: int,
    mirror: bool,
    json_: bool,
) -> None:
    """Set the quota of the deployment, a project or a user on a partition (replacing it).

    Limits left out mean no limit of that kind. Setting a quota again replaces all its limits.

    Example: rxctl admin quota set --partition gpu --user rxalice --gpus 2 --containers 2 --mirror
    """
    if project is not None and linux_user is not None:
        raise click.ClickException("give at most one of --project and --user")
    scope, subject = "deployment", ""
    if project is not None:
        scope, subject = "project", project
    elif linux_user is not None:
        scope, subject = "user", linux_user
    answer = client.post(
        routes.ADMIN_QUOTAS,
        {
            "partition": partition,
            "scope": scope,
            "subject": subject,
            "max_gpus": gpus,
            "max_cpus": cpus,
            "max_mem_mb": mem_mb,
            "max_containers": containers,
            "mirror_qos": mirror,
        },
    )
    if json_:
        emit_json(answer)
        return
    echo(
        f"Quota {answer['id']} on partition {answer['partition']} for {scope_words(answer)}: "
        f"{limit_words(answer)}."
    )
    lines = mirror_lines(answer.get("mirrored") or [], answer["id"])
    if lines:
        echo_lines(lines)


@quota.command("list")
@list_command
def list_(client: Client, json_: bool, shape: render.Shape) -> None:
    """List the quotas with what is in use (used/limit, "-": no limit) and who holds it.

    Example: rxctl admin quota list
    """
    print_list(client.get(routes.ADMIN_QUOTAS), "quotas", quota_lines, json_, shape)


@quota.command("rm")
@click.argument("quota_id", metavar="ID", type=int)
@json_option
@click.pass_obj
@api_errors
def rm(client: Client, quota_id: int, json_: bool) -> None:
    """Remove quota ID (see `rxctl admin quota list`) and its Slurm QOS mirror, if any.

    Example: rxctl admin quota rm 3
    """
    answer = client.request("DELETE", routes.path(routes.ADMIN_QUOTA, quota_id))
    if json_:
        emit_json(answer)
        return
    removed = answer["removed"]
    echo(
        f"Removed quota {removed['id']} on partition {removed['partition']} for "
        f"{scope_words(removed)}."
    )
    lines = mirror_lines(answer.get("mirrored") or [])
    if lines:
        echo_lines(lines)


@click.command("containers")
@list_command
def containers(client: Client, json_: bool, shape: render.Shape) -> None:
    """List every starting, running, stopping and waiting container, with what it holds.

    A running one also shows what its job uses now, as `rxctl status` does: CPUs busy, memory
    in use and GPUs held ("-" when Slurm does not say).

    Example: rxctl admin containers --json
    """
    print_list(client.get(routes.ADMIN_CONTAINERS), "containers", container_lines, json_, shape)


@click.command("stop", cls=ProjectNamedFirst)
@project_option
@json_option
@click.pass_obj
@api_errors
def stop(client: Client, project: str | None, json_: bool) -> None:
    """Stop the container of a project, whoever owns it (recorded in the audit log).

    Its overlay and workspace stay; an owner may start it again.

    Example: rxctl admin stop --project alpha
    """
    project = choose_project(client, project)
    answer = client.post(routes.path(routes.ADMIN_CONTAINER_STOP, project))
    if json_:
        emit_json(answer)
    else:
        echo(f"{project}: stopped by an admin; now {render.cell(answer.get('state'))}")
