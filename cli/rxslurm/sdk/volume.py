"""`Volume`: a named volume (docs/volumes.md) owned by a project, its files copied in and out as
the caller, by rxctl's own volume code (`rxctl volume put/get`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from rxslurm.cli import commands_volume
from rxslurm.cli.client import Client
from rxslurm.sdk.errors import BadRequest, NotFound, RxError, translated


@contextmanager
def _as(kind: type[RxError]) -> Iterator[None]:
    """rxctl's volume code says what went wrong as a ClickException: the SDK's `kind` here."""
    try:
        yield
    except click.ClickException as exc:
        raise kind(exc.message) from None


class Volume:
    """The volume `name`. Given to `Container(volumes=[(vol, "/data")])` it belongs to that
    container's project: `run()` creates it there if the project neither owns nor mounts it yet,
    and mounts it. `project=` names the project to reach it through without a container.

    Files are copied as you, on this host (where the volumes' filesystem is mounted: login
    nodes), as `rxctl volume put/get` copies them.
    """

    def __init__(self, name: str, *, project: str | None = None, socket: str | None = None):
        self.name = name
        self.project = project
        self._client = Client(socket)

    def __repr__(self) -> str:
        return f"Volume({self.name!r}, project={self.project!r})"

    def attach(self, project: str, client: Client) -> None:
        """A container's volume: reached through its project and its client."""
        if self.project is None:
            self.project = project
            self._client = client

    def path(self) -> Path:
        """The volume's folder, as rxd says (the project owns or mounts it)."""
        if self.project is None:
            raise BadRequest(
                f"volume {self.name} has no project yet: give it to a Container or name project="
            )
        with translated(), _as(NotFound):
            return commands_volume.volume_path(self._client, self.project, self.name)

    def _inside(self, relative: str) -> Path:
        root = self.path()
        if not relative:
            return root
        with _as(BadRequest):
            return commands_volume.inside(root, relative)

    def put_file(self, local_path: str | os.PathLike[str], remote_path: str = "") -> None:
        """Copy a local file or folder into the volume (`remote_path`: a path inside it; its
        top by default; into it when it is a folder)."""
        source = Path(local_path)
        if not source.exists() and not source.is_symlink():
            raise NotFound(f"{source} does not exist")
        with _as(RxError):
            commands_volume._copy_or_fail(source, self._inside(remote_path), keep_modes=False)

    def get_file(self, remote_path: str, local_path: str | os.PathLike[str] = ".") -> None:
        """Copy a file or folder of the volume out to `local_path` (into it when a folder)."""
        origin = self._inside(remote_path)
        if not origin.exists() and not origin.is_symlink():
            raise NotFound(f"volume {self.name} has no {remote_path}")
        with _as(RxError):
            commands_volume._copy_or_fail(origin, Path(local_path), keep_modes=True)

    def listdir(self, remote_path: str = "") -> list[str]:
        """The names in a folder of the volume (its top by default), sorted."""
        folder = self._inside(remote_path)
        try:
            return sorted(os.listdir(folder))
        except FileNotFoundError:
            raise NotFound(f"volume {self.name} has no folder {remote_path or '.'}") from None
        except OSError as exc:
            where = remote_path or "."
            raise RxError(f"cannot list {where} of volume {self.name}: {exc}") from None
