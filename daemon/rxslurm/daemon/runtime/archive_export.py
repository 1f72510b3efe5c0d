"""Writing a project's export archive (docs/data.md) to stdout, as the runtime user.

Root never reads the container's folder or the workspace: like the snapshot copy, a constant
script runs as the runtime user (isolated Python) and rxd only relays its stdout to the caller.
The overlay is read from a snapshot (a read-only copy taken while no job held the overlay, never
the live mounted image). The workspace is walked through folder descriptors opened without
following links: a symlink is stored as a link when it stays inside the workspace and skipped
otherwise (a link to /etc/shadow or another home is never opened); devices, FIFOs and sockets
are skipped; setuid/setgid bits are dropped. The manifest comes last, when the sizes are known.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rxslurm.daemon.runtime import archive_rules
from rxslurm.daemon.runtime.user_script import script_argv
from rxslurm.slurm.runas import RunAs, spawn

# Run as the runtime user by `python -I -S -c`: the rules module's source, then this.
# argv: the snapshot file (absolute), the workspace folder ("" for none), the manifest's fields
# (JSON). stdout: the gzip-compressed tar.
DRIVER = r"""
import gzip, io, os, stat, sys, tarfile
snapshot, workspace, base = sys.argv[1:4]
FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
me = os.getuid()
counts = {"workspace_files": 0, "workspace_bytes": 0, "skipped": 0}

class Exactly(io.RawIOBase):
    # A file read as exactly `size` bytes: one that shrank meanwhile is padded with zeros.
    def __init__(self, fd, size):
        self.fd, self.left = fd, size
    def readable(self):
        return True
    def readinto(self, buf):
        if self.left <= 0:
            return 0
        n = os.readv(self.fd, [memoryview(buf)[: min(len(buf), self.left)]])
        if n == 0:
            n = min(len(buf), self.left)
            buf[:n] = bytes(n)
        self.left -= n
        return n

def info_of(name, st, kind):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode) & 0o777
    info.mtime = int(st.st_mtime)
    return info

def add_file(tar, fd, name, st):
    info = info_of(name, st, tarfile.REGTYPE)
    info.size = st.st_size
    tar.addfile(info, io.BufferedReader(Exactly(fd, st.st_size), 1 << 20))

def inside(name, target):
    if target.startswith("/") or has_control(target):
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    return resolved == WORKSPACE or resolved.startswith(WORKSPACE + "/")

def walk(tar, dfd, rel):
    for entry in sorted(os.listdir(dfd)):
        name = rel + "/" + entry
        if has_control(name) or len(name.encode("utf-8", "replace")) > MAX_NAME_BYTES:
            counts["skipped"] += 1
            continue
        st = os.stat(entry, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(entry, dir_fd=dfd)
            if not inside(name, target):
                counts["skipped"] += 1
                continue
            info = info_of(name, st, tarfile.SYMTYPE)
            info.linkname = target
            tar.addfile(info)
        elif stat.S_ISDIR(st.st_mode):
            try:
                sub = os.open(entry, FLAGS | os.O_DIRECTORY, dir_fd=dfd)
            except OSError:
                counts["skipped"] += 1
                continue
            tar.addfile(info_of(name, os.fstat(sub), tarfile.DIRTYPE))
            walk(tar, sub, name)
            os.close(sub)
        elif stat.S_ISREG(st.st_mode):
            try:
                fd = os.open(entry, FLAGS, dir_fd=dfd)
            except OSError:
                counts["skipped"] += 1
                continue
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # replaced meanwhile
                counts["skipped"] += 1
            else:
                add_file(tar, fd, name, st)
                counts["workspace_files"] += 1
                counts["workspace_bytes"] += st.st_size
            os.close(fd)
        else:
            counts["skipped"] += 1

out = os.fdopen(1, "wb", closefd=False)
# Level 1: an overlay is mostly zeros, which any level packs ~1000:1; level 9 (tarfile's own
# "w|gz") is several times slower for no gain there.
packed = gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1, mtime=0)
with tarfile.open(fileobj=packed, mode="w|", format=tarfile.PAX_FORMAT) as tar:
    src = os.open(snapshot, FLAGS)
    st = os.fstat(src)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != me:
        sys.stderr.write("the snapshot is not the runtime user's regular file\n")
        sys.exit(3)
    add_file(tar, src, OVERLAY, st)
    manifest = dict(json.loads(base), overlay_bytes=st.st_size, workspace=bool(workspace))
    if workspace:
        top = os.open(workspace, FLAGS | os.O_DIRECTORY)
        tar.addfile(info_of(WORKSPACE, os.fstat(top), tarfile.DIRTYPE))
        walk(tar, top, WORKSPACE)
    manifest.update(counts)
    raw = json.dumps(manifest, sort_keys=True).encode()
    info = tarfile.TarInfo(MANIFEST)
    info.size = len(raw)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(raw))
packed.close()
out.flush()
"""


def script() -> str:
    """The rules' source (so both ends agree on names and limits) and the driver."""
    return Path(archive_rules.__file__).read_text(encoding="utf-8") + DRIVER


def export_argv(snapshot: str, workspace: str | None, manifest: Mapping[str, Any]) -> list[str]:
    return script_argv(
        script(), snapshot, workspace or "", json.dumps(dict(manifest), sort_keys=True)
    )


def start_export(
    snapshot: str,
    workspace: str | None,
    manifest: Mapping[str, Any],
    as_user: RunAs | None,
) -> subprocess.Popen[bytes]:
    """The export script started as ``as_user`` (None: this process); its stdout is the
    archive, its stderr why it failed."""
    return spawn(
        export_argv(snapshot, workspace, manifest),
        as_user,
        stdin=subprocess.DEVNULL,
        text=False,
    )
