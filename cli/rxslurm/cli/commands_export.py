"""`rxctl export` and `rxctl import`: a project's persistent layer as an archive, and back
(docs/data.md)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

import click

from rxslurm.cli.client import Client, ClientError
from rxslurm.cli.common import api_errors, echo, emit_json, json_option, project_option
from rxslurm.cli.project_choice import choose_project
from rxslurm.cli.transfer import Progress, download, upload
from rxslurm.protocol import routes

SUFFIX = ".rx.tar.gz"


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def progress_line(verb: str, stream: IO[str], total: int | None = None) -> Progress:
    """Bytes so far on ``stream`` when it is a terminal, at most ~5 times a second."""
    if not stream.isatty():
        return lambda _n: None
    last = [0.0]

    def show(n: int) -> None:
        now = time.monotonic()
        if now - last[0] < 0.2 and n != total:
            return
        last[0] = now
        of = f" of {human(total)}" if total else ""
        stream.write(f"\r{verb} {human(n)}{of}\x1b[K")
        stream.flush()

    return show


def refuse_existing(path: str) -> None:
    """Before asking rxd: an existing file is never written over."""
    if path != "-" and os.path.lexists(path):
        raise ClientError(f"{path} exists; name another file with -o")


@contextlib.contextmanager
def output_file(path: str) -> Iterator[IO[bytes]]:
    """``path`` written whole or not at all: a temporary name linked into place at the end,
    never over an existing file ("-": stdout)."""
    if path == "-":
        yield sys.stdout.buffer
        return
    refuse_existing(path)
    folder = os.path.dirname(path) or "."
    tmp = os.path.join(folder, f".{os.path.basename(path)}.part-{os.getpid()}")
    try:
        with open(tmp, "xb") as out:
            yield out
        os.link(tmp, path)  # fails if the path appeared meanwhile: nothing clobbered
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@click.command(name="export")
@project_option
@click.option(
    "-o",
    "--output",
    metavar="FILE",
    help=f"Where to write it (default PROJECT{SUFFIX}; - for stdout).",
)
@click.option(
    "--workspace", is_flag=True, help="Add the workspace's tree (links inside it stay links)."
)
@json_option
@click.pass_obj
@api_errors
def export(
    client: Client, project: str | None, output: str | None, workspace: bool, json_: bool
) -> None:
    """Export the container's persistent layer (what was installed) as an archive (manager+).

    The overlay is read from a snapshot (taken now if the container sleeps; its newest if it
    runs), never from the mounted image. With --workspace the workspace's files go too; a
    symlink pointing out of it is left out, never followed.

    Example: rxctl export --project alpha -o alpha.rx.tar.gz --workspace
    """
    name = choose_project(client, project)
    path = output or f"{name}{SUFFIX}"
    route = routes.path(routes.PROJECT_EXPORT, name) + ("?workspace=1" if workspace else "")
    show = progress_line("exported", sys.stderr)
    refuse_existing(path)
    try:
        written = download(client, route, lambda: output_file(path), show)
    except OSError as exc:
        raise ClientError(f"cannot write {path}: {exc.strerror}") from None
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    result: dict[str, Any] = {"project": name, "file": path, "bytes": written}
    if json_:
        emit_json(result)
    elif path != "-":
        echo(f"exported {name} to {path} ({human(written)})")


@click.command(name="import")
@project_option
@click.argument("archive", type=click.Path(dir_okay=False, allow_dash=False))
@json_option
@click.pass_obj
@api_errors
def import_(client: Client, project: str | None, archive: str, json_: bool) -> None:
    """Replace a sleeping container's persistent layer by an exported one (owner).

    The archive is checked before anything changes; the replaced overlay is kept beside the new
    one (overlay.img.before-import) until garbage collection. A workspace in the archive is
    unpacked into a new folder imported-<time> of the workspace, never over existing files.

    Example: rxctl import --project beta alpha.rx.tar.gz
    """
    name = choose_project(client, project)
    try:
        source = open(archive, "rb")  # noqa: SIM115 - closed below, after the upload
    except OSError as exc:
        raise ClientError(f"cannot read {archive}: {exc.strerror}") from None
    with source:
        size = os.fstat(source.fileno()).st_size
        show = progress_line("sent", sys.stderr, size)
        result = upload(client, routes.path(routes.PROJECT_IMPORT, name), source, size, show)
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    if json_:
        emit_json(result)
        return
    answer = result if isinstance(result, dict) else {}
    line = f"imported {archive} into {name}; the old overlay is kept until gc"
    if answer.get("workspace_folder"):
        line += f"; workspace files in {answer['workspace_folder']}/"
    echo(line)
