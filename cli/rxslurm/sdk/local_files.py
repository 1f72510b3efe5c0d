"""Files of this host an `Image` adds (`add_local_file`, `add_local_dir`), named by their contents.

Each added file or folder is one folder of the build context, `f-<digest>` or `d-<digest>`, the
digest of what it holds (for a folder: every file's path, executable bit and contents' digest).
The definition names those folders, so the image's own digest changes with any byte of them: an
unchanged file finds the old build, a changed one builds again. At build time Apptainer stages
each folder whole under STAGE (`%files`), a `%post` line copies it into place at its step of the
chain, and the last `%post` line removes STAGE.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from rxslurm.sdk.errors import BadRequest

# Where the build stages the context's folders inside the image, removed before it is saved.
STAGE = "/.rx-context"
DIGEST_CHARS = 32
READ_BYTES = 1 << 20


@dataclass(frozen=True)
class Entry:
    """One file to upload: its path in the build context, where it is here, what it holds."""

    path: str
    local: str
    sha256: str
    executable: bool


@dataclass(frozen=True)
class Upload:
    """An added file (`name` its name) or folder, as one folder of the build context."""

    key: str
    name: str
    entries: tuple[Entry, ...]

    @property
    def staged(self) -> str:
        return f"{STAGE}/{self.key}"

    @property
    def size(self) -> int:
        return sum(os.stat(e.local).st_size for e in self.entries)


def _plain(what: str, text: str) -> str:
    if not text or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise BadRequest(f"{what} {text!r} is empty or holds a control character")
    return text


def check_remote(remote: object) -> str:
    """A path in the image: absolute, no control character, no `..`."""
    if not isinstance(remote, str) or not remote.startswith("/"):
        raise BadRequest(f"the path in the image must be absolute, not {remote!r}")
    _plain("the path in the image", remote)
    if ".." in remote.split("/"):
        raise BadRequest(f"the path in the image must not contain '..': {remote!r}")
    return remote


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(READ_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _entry(path: str, local: str) -> Entry:
    info = os.stat(local)
    executable = bool(info.st_mode & stat.S_IXUSR)
    return Entry(path, local, file_digest(local), executable)


def local_file(local: str | os.PathLike[str]) -> Upload:
    """A regular file of this host (a link to one counts as it), read now."""
    path = Path(local).expanduser().absolute()
    if not path.is_file():
        raise BadRequest(f"add_local_file: {str(path)!r} is not a file")
    name = _plain("the file name", path.name)
    try:
        entry = _entry(name, str(path))
    except OSError as exc:
        raise BadRequest(f"add_local_file: cannot read {str(path)!r}: {exc.strerror}") from None
    key = "f-" + entry.sha256[:DIGEST_CHARS]
    return Upload(key, name, (Entry(f"{key}/{name}", str(path), entry.sha256, entry.executable),))


def local_dir(local: str | os.PathLike[str]) -> Upload:
    """A folder of this host: every regular file below it (links to files followed; folders
    are walked, not links to them; empty folders and special files left out), read now."""
    top = Path(local).expanduser().absolute()
    if not top.is_dir():
        raise BadRequest(f"add_local_dir: {str(top)!r} is not a folder")
    found: list[Entry] = []
    try:
        for folder, dirs, names in os.walk(top):
            dirs.sort()
            for name in sorted(names):
                here = os.path.join(folder, name)
                if not os.path.isfile(here):
                    continue
                rel = os.path.relpath(here, top)
                found.append(_entry(_plain("a file name", rel), here))
    except OSError as exc:
        raise BadRequest(f"add_local_dir: cannot read {str(top)!r}: {exc}") from None
    manifest = "".join(f"{e.path}\0{int(e.executable)}\0{e.sha256}\n" for e in found)
    key = "d-" + hashlib.sha256(manifest.encode()).hexdigest()[:DIGEST_CHARS]
    entries = tuple(Entry(f"{key}/{e.path}", e.local, e.sha256, e.executable) for e in found)
    return Upload(key, _plain("the folder name", top.name or "/"), entries)
