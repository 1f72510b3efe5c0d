"""The folder of pulled images (``containers.image_dir``): names, safety checks, installing.

Every container that names the same reference runs the same cached file, so the folder and its
files must be root's alone: a user who could write the folder could plant a file under the
predictable name of a popular image (or a symlink to one of their own) and every later user of
that reference would run it. The folder must be root-owned and not group/world-writable; a
cached image is used only if it is a regular file (lstat: never a symlink), owned by root, not
writable by anyone else and with a single link. A pulled file is not trusted either: it is read
through a descriptor opened without following links, checked, and copied into a root-owned file.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import stat
from pathlib import Path

from rxslurm.daemon.folders import make_folder
from rxslurm.protocol.image_ref import check_digest

PULL_SCHEMES = ("docker", "oras", "library")
# A reference is user input that names a file and reaches argv: bounded and printable.
MAX_REFERENCE = 4096
_COPY_CHUNK = 1 << 20


class UnsafeImageDir(RuntimeError):
    """image_dir, or a file in it, is not provably root's; the message says what to fix."""


def is_reference(image: str) -> bool:
    """Whether ``image`` is pulled (``docker://…``) rather than a file path on the nodes."""
    return not image.startswith("/")


def check_reference(uri: str) -> str:
    """The reference if rx-slurm pulls it; ValueError with the reason otherwise."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in PULL_SCHEMES or not rest.strip("/"):
        raise ValueError(f"cannot pull {uri!r}: only docker://, oras:// and library:// are")
    if len(uri) > MAX_REFERENCE or any(ch.isspace() or not ch.isprintable() for ch in uri):
        raise ValueError("an image reference must be printable, without spaces, at most 4 KiB")
    return uri


def image_file_name(uri: str) -> str:
    """A file name for a pulled reference: readable, and unique per full reference
    (``docker://a/python:3`` and ``docker://b/python:3`` must not share a file)."""
    ref = uri.split("://", 1)[1]
    base = ref.rstrip("/").rsplit("/", 1)[-1]
    name, _, digest = base.partition("@")
    name, sep, tag = name.partition(":")
    label = re.sub(r"[^A-Za-z0-9._-]", "_", f"{name}_{tag if sep else 'latest'}")
    if digest:
        label = re.sub(r"[^A-Za-z0-9._-]", "_", f"{name}_{digest}")
    # A leading dot would hide the image and collide with install's temporary names.
    label = label.lstrip(".")[:100] or "image"
    return f"{label}-{hashlib.sha256(uri.encode()).hexdigest()[:10]}.sif"


def digest_file_name(digest: str) -> str:
    """The file name of a pulled image with this content digest (``sha256-<hex>.sif``): every
    reference that resolved to it shares the file."""
    algorithm, _, hex_digits = check_digest(digest).partition(":")
    return f"{algorithm}-{hex_digits}.sif"


def check_root_folder(path: Path, setting: str) -> None:
    """``path`` (made if missing) must be a real folder owned by root, not group/world-writable."""
    make_folder(path)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeImageDir(f"{setting} {path} is not a folder (a symlink is not accepted)")
    if info.st_uid != 0 or info.st_mode & 0o022:
        raise UnsafeImageDir(
            f"{setting} {path} must be owned by root and not writable by group or others "
            f"(it is uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o})"
        )


def cached_image(image_dir: Path, uri: str) -> Path | None:
    """The image cached under ``uri``'s own name (references that are not resolved to a digest,
    and pulls of an older rxd), or None."""
    return cached_file(image_dir, image_file_name(uri))


def cached_file(image_dir: Path, name: str) -> Path | None:
    """The cached image named ``name``, or None when there is none yet. A file under its name
    that is not provably root's raises UnsafeImageDir: it is never used, nor silently replaced."""
    check_root_folder(image_dir, "containers.image_dir")
    target = image_dir / name
    try:
        info = target.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeImageDir(f"{target} is not a regular file (a symlink?); an admin removes it")
    if info.st_uid != 0 or info.st_mode & 0o022 or info.st_nlink != 1:
        raise UnsafeImageDir(
            f"{target} is not root's alone (uid {info.st_uid}, mode "
            f"{stat.S_IMODE(info.st_mode):04o}, {info.st_nlink} links); an admin removes it"
        )
    return target


def install(source_fd: int, image_dir: Path, name: str) -> Path:
    """Copy the pulled image behind ``source_fd`` into ``image_dir`` as a root-owned 0644 file
    named ``name`` (its digest's, or the reference's). A temporary name first, renamed into
    place, so a crash leaves no half image under the real name; a concurrent install of the same
    image wins or loses whole."""
    check_root_folder(image_dir, "containers.image_dir")
    target = image_dir / name
    partial = image_dir / f".{target.name}.{secrets.token_hex(6)}.part"
    out = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.lseek(source_fd, 0, os.SEEK_SET)
            while chunk := os.read(source_fd, _COPY_CHUNK):
                os.write(out, chunk)
            os.fchown(out, 0, 0)
            os.fchmod(out, 0o644)
            os.fsync(out)
        finally:
            os.close(out)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def open_pulled(folder_fd: int, name: str, owner_uid: int, max_bytes: int) -> int:
    """A read descriptor of the file the pull account wrote as ``name`` in its folder: opened
    without following links or blocking (a FIFO), and refused unless it is a regular file of
    that account with one link and at most ``max_bytes``."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != owner_uid or info.st_nlink != 1:
            raise UnsafeImageDir("the pull left something other than a regular file of its own")
        if info.st_size > max_bytes:
            raise UnsafeImageDir(f"the image is larger than {max_bytes // (1 << 20)} MiB")
    except BaseException:
        os.close(fd)
        raise
    return fd
