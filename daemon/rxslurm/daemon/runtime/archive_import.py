"""Unpacking an export archive into a sleeping container's folder, as the runtime user.

The archive arrives on the script's stdin (rxd relays the caller's upload, size-capped here as
well as in rxd). The script, run as the runtime user (isolated Python, the rules module's source
prepended), holds the overlay's lock (`overlay.lock`, as the holder and the snapshot copy do) from
start to end, so no job mounts the overlay meanwhile, and:

1. writes the upload into a new folder `import-<stamp>/` of the container's folder, and goes on
   only when rxd ends it as proven (on the network door: the body matched its MUNGE credential);
2. checks every header and the manifest (runtime/archive_rules.py): anything refused removes that
   folder and changes nothing else;
3. writes `overlay.img` there (sparse: blocks of zeros stay holes; it is a regular file of a
   fixed name, checked), and extracts the workspace's tree (if any), through tarfile's `data`
   filter where this Python has it, into a new folder `imported-<stamp>/` of the workspace,
   never over existing files;
4. swaps the overlay in: the old one is hard-linked to `overlay.img.before-import` (replacing an
   earlier import's) and the new one renamed over `overlay.img` (atomic); the folder is fsynced.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from rxslurm.daemon.runtime import archive_rules
from rxslurm.daemon.runtime.archive_rules import Limits
from rxslurm.daemon.runtime.user_script import script_answer, script_argv
from rxslurm.slurm.runas import RunAs, spawn

IMPORT_TIMEOUT_S = 1800.0
BACKUP = "overlay.img.before-import"

# The archive on the script's stdin: frames of a 4-byte big-endian length and that many bytes
# (at most MAX_FRAME), an empty frame to end, then one byte: PROVEN, or anything else when the
# upload did not match its credential (api/door_stream.py). The script unpacks nothing before.
MAX_FRAME = 1 << 24
PROVEN = b"Y"
NOT_PROVEN = b"N"

# argv: the container's folder, the workspace folder ("" for none), the stamp (digits), the
# upload cap (bytes), max members, max unpacked bytes, max ratio, the extraction ("auto": the
# data filter where this Python has it; "plain": sanitize() only, for tests of the fallback).
# stdin: the framed archive. stdout: one JSON line.
DRIVER = (
    f"""
MAX_FRAME = {MAX_FRAME}
PROVEN = {PROVEN!r}
"""
    + r"""
import errno, fcntl, json, os, re, shutil, stat, struct, sys
folder, workspace, stamp, cap, members, total, ratio, extraction = sys.argv[1:9]
limits = Limits(max_members=int(members), max_total_bytes=int(total), max_ratio=int(ratio))
cap = int(cap)
FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
me = os.getuid()
if not re.fullmatch(r"[0-9]{1,24}", stamp):
    sys.exit(2)

def done(**fields):
    print(json.dumps(fields))
    sys.exit(0)

def own_folder(path, dir_fd=None):
    fd = os.open(path, FLAGS | os.O_DIRECTORY, dir_fd=dir_fd)
    if os.fstat(fd).st_uid != me:
        done(error="a folder is not the runtime user's")
    return fd

work = "import-" + stamp
d = own_folder(folder)
lock = os.open("overlay.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
               | os.O_NONBLOCK, 0o600, dir_fd=d)
if not stat.S_ISREG(os.fstat(lock).st_mode):
    done(error="overlay.lock is not a regular file")
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    done(busy=True)
try:
    old = os.open("overlay.img", FLAGS | os.O_NONBLOCK, dir_fd=d)
except FileNotFoundError:
    old = None
if old is not None:
    st = os.fstat(old)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != me:
        done(error="overlay.img is not the runtime user's regular file")
    try:
        fcntl.fcntl(old, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_RDLCK, 0, 0, 0, 0))
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            done(busy=True)
        raise
os.mkdir(work, 0o700, dir_fd=d)
w = own_folder(work, dir_fd=d)
target = None

def refuse(why):
    shutil.rmtree(work, dir_fd=d)
    if target is not None:
        top, name, fd = target
        # Members may rename entries of the workspace: remove the folder made here, not
        # whatever has its name now.
        here = os.stat(name, dir_fd=top, follow_symlinks=False)
        made = os.fstat(fd)
        if (here.st_dev, here.st_ino) == (made.st_dev, made.st_ino):
            shutil.rmtree(name, dir_fd=top)
    done(refused=why)

def private(fd):
    # The workspace's default ACLs would give members entry to the new folder: none, until
    # everything is unpacked (rxd then applies the workspace's ACLs). What a member made in it
    # before this (a symlink to write through) is refused: from here on nobody else can.
    for attr in ("system.posix_acl_default", "system.posix_acl_access"):
        try:
            os.removexattr(fd, attr)
        except OSError as e:
            if e.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
                raise
    os.fchmod(fd, 0o700)
    if os.listdir(fd):
        refuse("someone else wrote into the new folder while it was made")

try:
    fd = os.open("archive.tar.gz", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                 | os.O_CLOEXEC, 0o600, dir_fd=w)
    received = 0
    source = sys.stdin.buffer

    def exactly(n):
        data = source.read(n)
        if len(data) != n:
            refuse("the upload was cut short")
        return data

    # Frames (framed() below): a cut upload ends without its end frame, and even a whole one is
    # unpacked only when rxd says it was proven.
    while size := struct.unpack(">I", exactly(4))[0]:
        if size > MAX_FRAME:
            refuse("a bad frame in the upload")
        chunk = exactly(size)
        received += len(chunk)
        if received > cap:
            refuse(f"the archive is over {cap} bytes")
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]
    if exactly(1) != PROVEN:
        refuse("the upload did not match its credential (altered on the way, or cut)")
    os.lseek(fd, 0, os.SEEK_SET)
    archive = os.fdopen(fd, "rb")
    try:
        tar = open_archive(archive)
        checked = check(tar, received, limits)
    except ArchiveRefused as e:
        refuse(str(e))
    # The overlay, sparse: blocks of zeros (most of an ext3 image) are left as holes.
    overlay = tar.getmember(OVERLAY)
    source = tar.extractfile(overlay)
    new = os.open(OVERLAY, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                  0o600, dir_fd=w)
    zeros = bytes(1 << 20)
    pos = 0
    while chunk := source.read(1 << 20):
        if chunk != zeros[: len(chunk)]:
            view = memoryview(chunk)
            done_bytes = 0
            while done_bytes < len(chunk):
                done_bytes += os.pwrite(new, view[done_bytes:], pos + done_bytes)
        pos += len(chunk)
    os.ftruncate(new, pos)
    ws_members = [m for m in tar.getmembers() if m.name.startswith(WORKSPACE + "/")]
    imported = None
    if ws_members:
        if not workspace:
            refuse("the archive holds a workspace but the project has none")
        top = own_folder(workspace)
        imported = "imported-" + stamp
        os.mkdir(imported, 0o700, dir_fd=top)
        made = own_folder(imported, dir_fd=top)
        target = (top, imported, made)
        private(made)
        # Through the descriptor: a member renaming the folder meanwhile changes nothing.
        dest = "/proc/self/fd/%d" % made
        for m in ws_members:
            m.name = m.name[len(WORKSPACE) + 1:]  # a link's target is relative to its folder
        extract(tar, ws_members, dest, data_filter=None if extraction == "auto" else False)
    if os.fstat(new).st_size != checked.manifest["overlay_bytes"]:
        refuse("the unpacked overlay's size differs from the manifest's")
    os.fsync(new)
    if old is not None:
        try:
            os.unlink(".before-import.tmp", dir_fd=d)
        except FileNotFoundError:
            pass
        os.link("overlay.img", ".before-import.tmp", src_dir_fd=d, dst_dir_fd=d,
                follow_symlinks=False)
        os.replace(".before-import.tmp", "overlay.img.before-import", src_dir_fd=d, dst_dir_fd=d)
    os.replace(OVERLAY, "overlay.img", src_dir_fd=w, dst_dir_fd=d)
    os.fsync(d)
    shutil.rmtree(work, dir_fd=d)
    done(imported=True, overlay_bytes=checked.manifest["overlay_bytes"],
         workspace_folder=imported, workspace_files=checked.workspace_files,
         backup="overlay.img.before-import" if old is not None else None,
         manifest=checked.manifest)
except Exception as e:
    # Whatever went wrong (a cut archive met while unpacking, a full disk): nothing stays.
    if isinstance(e, OSError) and e.errno:
        why = (e.filename + ": " if isinstance(e.filename, str) else "") + os.strerror(e.errno)
    else:  # tarfile.FilterError (PEP 706's filter) among them
        why = type(e).__name__ + ": " + str(e)[:300]
    try:
        refuse(why)
    except OSError:
        done(error=why)
"""
)


class ImportFailed(Exception):
    """The script could not run or failed; the message says why."""


@dataclass(frozen=True)
class Outcome:
    busy: bool = False  # a job holds the overlay: nothing was read
    refused: str | None = None  # the archive broke a rule: nothing changed
    overlay_bytes: int = 0
    workspace_folder: str | None = None  # where the workspace's tree went, in the workspace
    workspace_files: int = 0
    backup: str | None = None
    manifest: dict[str, object] | None = None


def frame(chunk: bytes) -> bytes:
    """One piece of the upload, as the script reads it."""
    return len(chunk).to_bytes(4, "big") + chunk


def end(proven: bool) -> bytes:
    """The end of the upload: the script unpacks only a proven one."""
    return frame(b"") + (PROVEN if proven else NOT_PROVEN)


def framed(archive: bytes, proven: bool = True) -> bytes:
    """A whole archive as the script reads it (tests, and small uploads)."""
    pieces = [frame(archive[i : i + MAX_FRAME]) for i in range(0, len(archive), MAX_FRAME)]
    return b"".join(pieces) + end(proven)


def script() -> str:
    return Path(archive_rules.__file__).read_text(encoding="utf-8") + DRIVER


def import_argv(
    state_dir: str,
    workspace: str | None,
    stamp: str,
    cap: int,
    limits: Limits,
    extraction: str = "auto",
) -> list[str]:
    if extraction not in ("auto", "plain"):
        raise ValueError(f"unknown extraction {extraction!r}")
    return script_argv(
        script(),
        state_dir,
        workspace or "",
        stamp,
        str(int(cap)),
        str(limits.max_members),
        str(limits.max_total_bytes),
        str(limits.max_ratio),
        extraction,
    )


def start_import(
    state_dir: str,
    workspace: str | None,
    stamp: str,
    cap: int,
    limits: Limits,
    as_user: RunAs | None,
    extraction: str = "auto",
) -> subprocess.Popen[bytes]:
    """The import script started as ``as_user`` (None: this process); write the archive to its
    stdin in frames and its end, close it, then read its answer with ``outcome``."""
    return spawn(
        import_argv(state_dir, workspace, stamp, cap, limits, extraction),
        as_user,
        stdin=subprocess.PIPE,
        text=False,
    )


def outcome(returncode: int, stdout: bytes, stderr: bytes) -> Outcome:
    answer = script_answer(
        returncode,
        stdout.decode("utf-8", "replace"),
        stderr.decode("utf-8", "replace"),
        failed="the import failed",
        error=ImportFailed,
    )
    manifest = answer.get("manifest")
    return Outcome(
        busy=answer.get("busy") is True,
        refused=str(answer["refused"]) if "refused" in answer else None,
        overlay_bytes=int(answer.get("overlay_bytes", 0)),
        workspace_folder=answer.get("workspace_folder"),
        workspace_files=int(answer.get("workspace_files", 0)),
        backup=answer.get("backup"),
        manifest=manifest if isinstance(manifest, dict) else None,
    )
