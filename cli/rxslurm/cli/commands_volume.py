"""`rxctl volume ...`: named volumes a project owns and projects of the same owners mount
(docs/volumes.md); files copied in and out as the caller."""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

import click

from rxslurm.cli import render
from rxslurm.cli.client import Client
from rxslurm.cli.common import (
    api_errors,
    echo,
    emit_json,
    json_option,
    list_command,
    project_option,
)
from rxslurm.cli.project_choice import choose_project
from rxslurm.protocol import routes


@click.group()
def volume() -> None:
    """Named volumes: storage a project owns that projects of the same owners mount.

    Example: rxctl volume create --project alpha datasets
    """


@volume.command("create")
@project_option
@click.argument("volume_name", metavar="VOLUME")
@json_option
@click.pass_obj
@api_errors
def create(client: Client, project: str | None, volume_name: str, json_: bool) -> None:
    """Create a volume owned by the project (owners only).

    The project's members get the access their role gives them in its workspace.

    Names: 1-32 characters, lowercase letters, digits and "-", starting with a letter.

    Example: rxctl volume create --project alpha datasets
    """
    owner = choose_project(client, project)
    answer = client.request(
        "POST", routes.path(routes.PROJECT_VOLUMES, owner), {"name": volume_name}
    )
    for warning in answer.get("warnings") or []:
        echo(f"Warning: {warning}", err=True)
    if json_:
        emit_json(answer)
    else:
        echo(f"Created volume {answer['name']} of project {answer['project']} at {answer['path']}.")


def _volume_lines(answer: dict[str, Any], shape: render.Shape) -> list[str]:
    rows: list[tuple[Any, ...]] = [
        (v["name"], "owns", answer["project"], "", v["path"]) for v in answer["volumes"]
    ]
    rows += [
        (
            m["volume"],
            "mounts" if m["allowed"] else "mounts (not allowed now)",
            m["project"],
            f"{m['target']}:{'ro' if m['read_only'] else 'rw'}",
            m["path"],
        )
        for m in answer["mounts"]
    ]
    return render.table(
        ("VOLUME", "USE", "OWNER PROJECT", "MOUNT", "PATH"),
        rows,
        shape,
        empty=f"Project {answer['project']} owns and mounts no volume.",
    )


@volume.command("list")
@project_option
@list_command
def list_(client: Client, project: str | None, json_: bool, shape: render.Shape) -> None:
    """The volumes the project owns and the ones it mounts, with where.

    Example: rxctl volume list --project alpha
    """
    name = choose_project(client, project)
    answer = client.get(routes.path(routes.PROJECT_VOLUMES, name))
    if json_:
        emit_json(answer)
    else:
        lines = _volume_lines(answer, shape)
        if lines:
            echo("\n".join(lines))


@volume.command("rm")
@project_option
@click.argument("volume_name", metavar="VOLUME")
@json_option
@click.pass_obj
@api_errors
def rm(client: Client, project: str | None, volume_name: str, json_: bool) -> None:
    """Remove a volume no project mounts (owners only); its folder goes to quarantine.

    Example: rxctl volume rm --project alpha datasets
    """
    owner = choose_project(client, project)
    answer = client.request("DELETE", routes.path(routes.PROJECT_VOLUME, owner, volume_name))
    for warning in answer.get("warnings") or []:
        echo(f"Warning: {warning}", err=True)
    if json_:
        emit_json(answer)
    else:
        echo(f"Removed volume {answer['removed']}.")


def volume_path(client: Client, project: str, name: str) -> Path:
    """Where rxd says the volume is: one the project owns or mounts."""
    answer = client.get(routes.path(routes.PROJECT_VOLUMES, project))
    paths = {v["name"]: v["path"] for v in answer["volumes"]}
    paths.update({m["volume"]: m["path"] for m in answer["mounts"] if m["allowed"]})
    if name not in paths:
        raise click.ClickException(f"project {project} neither owns nor mounts a volume {name!r}")
    return Path(paths[name])


def inside(root: Path, relative: str) -> Path:
    """`relative` below the volume's folder: no absolute path, no '..' part."""
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts:
        raise click.ClickException(
            f"{relative!r} must be a path inside the volume (relative, without '..')"
        )
    return root / pure


def copy(source: Path, dest: Path, *, keep_modes: bool) -> None:
    """Copy a file, a link or a folder as `cp -r` does: into `dest` when it is a folder. Links are
    copied as links, never followed. Without `keep_modes` (into a volume) nothing is chmod-ed:
    a chmod would narrow the ACL mask, and the volume's default ACLs (members' access) apply."""
    if dest.is_dir() and not dest.is_symlink():
        dest = dest / source.name
    if source.is_symlink():
        os.symlink(os.readlink(source), dest)
    elif source.is_dir():
        dest.mkdir(exist_ok=True)
        for child in sorted(source.iterdir()):
            copy(child, dest / child.name, keep_modes=keep_modes)
    elif keep_modes:
        shutil.copy2(source, dest)
    else:
        shutil.copyfile(source, dest)


def _copy_or_fail(source: Path, dest: Path, *, keep_modes: bool) -> None:
    try:
        copy(source, dest, keep_modes=keep_modes)
    except OSError as exc:
        raise click.ClickException(render.safe(f"cannot copy {source} to {dest}: {exc}")) from None


@volume.command("put")
@project_option
@click.argument("volume_name", metavar="VOLUME")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.argument("dest", required=False, default="")
@json_option
@click.pass_obj
@api_errors
def put(
    client: Client, project: str | None, volume_name: str, source: Path, dest: str, json_: bool
) -> None:
    """Copy a file or folder into the volume (DEST: a path inside it; default its top).

    The copy runs as you, here: your access to the volume decides (members of the owning
    project by role). Works where the volumes' filesystem is mounted (login nodes).

    Example: rxctl volume put --project alpha datasets ./train.csv raw/train.csv
    """
    root = volume_path(client, choose_project(client, project), volume_name)
    target = inside(root, dest) if dest else root
    _copy_or_fail(source, target, keep_modes=False)
    _done(json_, str(source), str(target), f"Copied {source} to volume {volume_name}:{dest or '.'}")


@volume.command("get")
@project_option
@click.argument("volume_name", metavar="VOLUME")
@click.argument("source")
@click.argument("dest", type=click.Path(path_type=Path), default=Path("."))
@json_option
@click.pass_obj
@api_errors
def get(
    client: Client, project: str | None, volume_name: str, source: str, dest: Path, json_: bool
) -> None:
    """Copy a file or folder (SOURCE: a path inside the volume) out to DEST (default: here).

    The copy runs as you, here: your access to the volume decides.

    Example: rxctl volume get --project alpha datasets raw/train.csv ./train.csv
    """
    root = volume_path(client, choose_project(client, project), volume_name)
    origin = inside(root, source)
    _copy_or_fail(origin, dest, keep_modes=True)
    _done(json_, str(origin), str(dest), f"Copied volume {volume_name}:{source} to {dest}")


def _done(json_: bool, source: str, dest: str, text: str) -> None:
    if json_:
        emit_json({"copied": source, "to": dest})
    else:
        echo(text)
