"""What an rx-slurm export archive may hold, and the check every imported archive passes first.

An archive is hostile until proven otherwise: it comes from a user and is unpacked into a folder
of the runtime user. The check reads only tar headers (and the small manifest), member by member,
and stops at the first problem or limit passed, so a bomb is refused before it is unpacked (a
member's data is skipped only after its declared size was counted). What passes is then
extracted with tarfile's PEP 706 ``data`` filter as a second line.

This module is the standard library only and holds no rx-slurm import: its source is prepended to
the import script that runs as the runtime user (`python -I -S`, runtime/archive_import.py), and
the unit tests import it as it is.

Layout (FORMAT 1): ``overlay.img`` (the persistent layer), optionally ``workspace/`` (the
workspace's tree: folders, regular files, symlinks that stay inside it), and ``manifest.json``
(written last, when the sizes are known).
"""

from __future__ import annotations

import json
import os
import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import IO, Any

FORMAT = 1
MANIFEST = "manifest.json"
OVERLAY = "overlay.img"
WORKSPACE = "workspace"
MAX_MANIFEST_BYTES = 64 * 1024
MAX_NAME_BYTES = 1024
# Mode bits an unpacked file never gets from an archive.
FORBIDDEN_BITS = 0o7000


@dataclass(frozen=True)
class Limits:
    max_members: int = 200_000
    max_total_bytes: int = 64 * 1024**3  # what the headers declare, all members together
    # Uncompressed over compressed: an overlay is mostly empty blocks, so this is generous.
    max_ratio: int = 2000


class ArchiveRefused(ValueError):
    """The archive breaks a rule; the message says which, in one line."""


@dataclass
class Checked:
    manifest: dict[str, Any]
    members: int = 0
    total_bytes: int = 0
    workspace_files: int = 0
    workspace_bytes: int = 0
    names: list[str] = field(default_factory=list)


def has_control(text: str) -> bool:
    return any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text)


def name_problem(name: str) -> str | None:
    """Why a member's name is refused, or None."""
    if not name:
        return "an empty name"
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        return "a name that is not UTF-8"
    if len(raw) > MAX_NAME_BYTES:
        return "a name too long"
    if has_control(name):
        return "a name with control characters"
    if name.startswith("/"):
        return "an absolute path"
    parts = name.rstrip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "a path with '..', '.' or an empty part"
    if parts[0] not in (MANIFEST, OVERLAY, WORKSPACE):
        return "a member outside overlay.img, workspace/ and manifest.json"
    if parts[0] != WORKSPACE and len(parts) > 1:
        return "a member inside overlay.img or manifest.json"
    return None


def member_problem(info: tarfile.TarInfo, links: set[str], seen: set[str]) -> str | None:
    """Why one member (its header) is refused, given the symlinks and names met before it."""
    name = info.name.rstrip("/")
    why = name_problem(info.name)
    if why:
        return why
    if name in seen:
        return "a name given twice"
    parents = name.split("/")
    for i in range(1, len(parents)):
        if "/".join(parents[:i]) in links:
            return "a member written through a symlink"
    if info.mode & FORBIDDEN_BITS:
        return "setuid, setgid or sticky bits"
    if info.islnk():
        return "a hard link"
    if info.issym():
        if not name.startswith(WORKSPACE + "/"):
            return "a symlink outside workspace/"
        target = info.linkname
        if not target or target.startswith("/"):
            return "a symlink pointing out (absolute)"
        if has_control(target) or len(target.encode("utf-8", "replace")) > MAX_NAME_BYTES:
            return "a symlink target with control characters or too long"
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if resolved != WORKSPACE and not resolved.startswith(WORKSPACE + "/"):
            return "a symlink pointing out"
        return None
    if info.isdir():
        return None if name.startswith(WORKSPACE) else "a folder outside workspace/"
    if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        return "a device node, FIFO or other special member"
    if name == WORKSPACE:
        return "workspace is not a folder"
    return None


def check(tar: tarfile.TarFile, compressed_bytes: int, limits: Limits) -> Checked:
    """Read the headers of ``tar`` (the archive, ``compressed_bytes`` long) and its manifest;
    ArchiveRefused at the first broken rule."""
    links: set[str] = set()
    seen: set[str] = set()
    manifest_raw: bytes | None = None
    checked = Checked(manifest={})
    overlay_bytes: int | None = None
    while True:
        try:
            info = tar.next()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ArchiveRefused(f"not a readable archive: {exc}") from None
        if info is None:
            break
        checked.members += 1
        if checked.members > limits.max_members:
            raise ArchiveRefused(f"more than {limits.max_members} members")
        why = member_problem(info, links, seen)
        if why:
            raise ArchiveRefused(f"{why}: {info.name[:200]!r}")
        name = info.name.rstrip("/")
        seen.add(name)
        checked.names.append(name)
        if info.issym():
            links.add(name)
        checked.total_bytes += info.size
        if checked.total_bytes > limits.max_total_bytes:
            raise ArchiveRefused(f"more than {limits.max_total_bytes} bytes unpacked")
        if checked.total_bytes > limits.max_ratio * max(compressed_bytes, 1):
            raise ArchiveRefused("a decompression bomb (unpacked size over ratio)")
        if name == OVERLAY and info.isreg():
            overlay_bytes = info.size
        elif name == MANIFEST and info.isreg():
            if info.size > MAX_MANIFEST_BYTES:
                raise ArchiveRefused("the manifest is too big")
            stream = tar.extractfile(info)
            assert stream is not None
            manifest_raw = stream.read(MAX_MANIFEST_BYTES + 1)
        elif name.startswith(WORKSPACE + "/") and info.isreg():
            checked.workspace_files += 1
            checked.workspace_bytes += info.size
    for link in sorted(links):
        if link_through_link(link, tar.getmember(link).linkname, links):
            raise ArchiveRefused(f"a symlink through another symlink: {link[:200]!r}")
    if manifest_raw is None:
        raise ArchiveRefused("no manifest.json")
    if overlay_bytes is None:
        raise ArchiveRefused("no overlay.img")
    checked.manifest = manifest_of(manifest_raw)
    lie = manifest_lie(checked.manifest, overlay_bytes, checked)
    if lie:
        raise ArchiveRefused(f"the manifest does not match the archive: {lie}")
    return checked


def link_through_link(name: str, target: str, links: set[str]) -> bool:
    """Whether following ``target`` from ``name``'s folder passes through a symlink of the
    archive: each link was checked lexically alone, and a chain of them could lead out."""
    here = posixpath.dirname(name).split("/")
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            here = here[:-1]
            continue
        here = [*here, part]
        if "/".join(here) in links and "/".join(here) != name:
            return True
    return False


def manifest_of(raw: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ArchiveRefused("the manifest is not JSON") from None
    if not isinstance(manifest, dict):
        raise ArchiveRefused("the manifest is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise ArchiveRefused(
            f"format version {manifest.get('format')!r}; this rx-slurm reads {FORMAT}"
        )
    for key in ("overlay_bytes", "workspace_files", "workspace_bytes"):
        value = manifest.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ArchiveRefused(f"the manifest's {key} is not a count")
    return manifest


def manifest_lie(manifest: dict[str, Any], overlay_bytes: int, checked: Checked) -> str | None:
    if manifest["overlay_bytes"] != overlay_bytes:
        return "overlay size"
    if manifest["workspace_files"] != checked.workspace_files:
        return "workspace file count"
    if manifest["workspace_bytes"] != checked.workspace_bytes:
        return "workspace size"
    return None


def sanitize(member: tarfile.TarInfo, uid: int, gid: int) -> tarfile.TarInfo:
    """What PEP 706's ``data`` filter does to a member check() let through, done here too: this
    Python may predate the filter (Debian 12's 3.11.2 does), and where it has it, both apply.
    No high bits, no group or other write, the owner may read and write its files and enter its
    folders, and everything belongs to whoever unpacks."""
    mode = member.mode & 0o755
    if member.isreg():
        mode |= 0o600
    elif member.isdir():
        mode |= 0o700
    member.mode = mode
    member.uid, member.gid = uid, gid
    member.uname = member.gname = ""
    return member


def has_data_filter(tar: tarfile.TarFile) -> bool:
    """Whether ``tar``'s tarfile module has PEP 706's filters (3.11.4+, 3.12+; not Debian 12's
    3.11.2). Asked of the archive's own class, so that tests can hand in a TarFile of
    ``backports.tarfile`` and exercise the filter path on a Python without it."""
    return hasattr(type(tar), "extraction_filter")


def extract(
    tar: tarfile.TarFile,
    members: list[tarfile.TarInfo],
    dest: str,
    *,
    data_filter: bool | None = None,
) -> None:
    """Unpack checked members into ``dest`` (a new folder), through the data filter when this
    Python has it (tarfile.FilterError then refuses). ``data_filter=False`` forces the fallback
    (tests of the path an older Python takes); None: whichever ``tar`` supports."""
    for member in members:
        sanitize(member, os.getuid(), os.getgid())
    if data_filter is None:
        data_filter = has_data_filter(tar)
    if data_filter:
        tar.extractall(dest, members=members, filter="data")
    else:
        # Every member passed check() and sanitize() above: the filter's own rules, by hand.
        tar.extractall(dest, members=members)  # noqa: S202


def open_archive(stream: IO[bytes]) -> tarfile.TarFile:
    """A gzip-compressed tar, read from a seekable file."""
    try:
        return tarfile.open(fileobj=stream, mode="r:gz")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveRefused(f"not a gzip-compressed tar archive: {exc}") from None
