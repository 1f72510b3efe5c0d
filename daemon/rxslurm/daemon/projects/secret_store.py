"""A project's secrets at rest: one file per project, mode 0600, owned by rxd's user (root), in a
0700 folder beside the ledger (docs/security.md#secrets). Never in the ledger: the ledger is
copied into backups and read by tools, and SQLite keeps deleted text in free pages.

A file holds the project's id and creation time (SQLite may give a deleted project's id to the
next one: a file of another project of the same id is empty to this one), and each secret's
value, who set it and when. A write replaces the file whole (a new file, fsynced, renamed over
the old one), so a crash leaves the old file or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets as random_names
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FOLDER_NAME = "secrets"
# MAX_COUNT secrets of MAX_VALUE each, with room for their JSON escapes.
MAX_FILE = 16 * 1024 * 1024
# Writes are rare; one lock for the process keeps two writers of one file from losing a change.
_WRITE_LOCK = threading.Lock()


class SecretStoreError(Exception):
    """The store is not what rxd made it (wrong owner or mode, a link, bad contents)."""


@dataclass(frozen=True)
class Secret:
    name: str
    value: str
    set_by: str
    set_at: str

    def listing(self) -> dict[str, str]:
        """What a member sees: never the value."""
        return {"name": self.name, "set_by": self.set_by, "set_at": self.set_at}


def folder_for(ledger_path: Path) -> Path:
    return ledger_path.parent / FOLDER_NAME


class SecretStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _file(self, project_id: int) -> Path:
        return self.folder / f"project-{int(project_id)}.json"

    def _check_folder(self, create: bool) -> bool:
        """Whether the folder exists (made 0700 when `create`); an error when it is not rxd's."""
        try:
            info = os.lstat(self.folder)
        except FileNotFoundError:
            if not create:
                return False
            os.mkdir(self.folder, 0o700)
            info = os.lstat(self.folder)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            raise SecretStoreError(f"{self.folder} is not a folder of rxd's user")
        if info.st_mode & 0o077:
            raise SecretStoreError(f"{self.folder} may be read by others (mode {info.st_mode:o})")
        return True

    def read(self, project_id: int, project_created_at: str) -> dict[str, Secret]:
        if not self._check_folder(create=False):
            return {}
        try:
            fd = os.open(self._file(project_id), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                raise SecretStoreError(f"the secrets of project {project_id} are not rxd's file")
            if info.st_mode & 0o077:
                raise SecretStoreError(f"the secrets of project {project_id} may be read by others")
            raw = handle.read(MAX_FILE + 1)
        if len(raw) > MAX_FILE:
            raise SecretStoreError(f"the secrets of project {project_id} are too large")
        return _parse(raw, project_id, project_created_at)

    def update(
        self,
        project_id: int,
        project_created_at: str,
        changes: Mapping[str, Secret | None],
    ) -> dict[str, Secret]:
        """Set (a Secret) or remove (None) secrets by name; the project's secrets after."""
        with _WRITE_LOCK:
            self._check_folder(create=True)
            current = self.read(project_id, project_created_at)
            for name, secret in changes.items():
                if secret is None:
                    current.pop(name, None)
                else:
                    current[name] = secret
            self._write(project_id, project_created_at, current)
            return current

    def forget(self, project_id: int, project_created_at: str) -> bool:
        """Remove a deleted project's file (only if it is that project's); whether there was one."""
        with _WRITE_LOCK:
            if not self.read(project_id, project_created_at):
                return False
            self._write(project_id, project_created_at, {})
            return True

    def _write(self, project_id: int, created_at: str, secrets: Mapping[str, Secret]) -> None:
        target = self._file(project_id)
        if not secrets:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
            return
        body = json.dumps(
            {
                "project_id": project_id,
                "project_created_at": created_at,
                "secrets": {
                    s.name: {"value": s.value, "set_by": s.set_by, "set_at": s.set_at}
                    for s in secrets.values()
                },
            }
        ).encode()
        temporary = self.folder / f".project-{int(project_id)}.{random_names.token_hex(8)}"
        fd = os.open(
            temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        folder_fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder_fd)
        finally:
            os.close(folder_fd)


def _parse(raw: bytes, project_id: int, created_at: str) -> dict[str, Secret]:
    try:
        data: Any = json.loads(raw)
        if data.get("project_id") != project_id or data.get("project_created_at") != created_at:
            return {}  # another project's, of the same id: gone with it
        return {
            name: Secret(name, str(item["value"]), str(item["set_by"]), str(item["set_at"]))
            for name, item in data["secrets"].items()
        }
    except (ValueError, AttributeError, KeyError, TypeError):
        raise SecretStoreError(f"the secrets of project {project_id} are unreadable") from None
