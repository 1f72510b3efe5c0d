"""Copying a container's overlay into a read-only snapshot, and who may read the snapshots, as
the runtime user.

The container's folder is the runtime user's, so root never works there: like the job-log reader
and cleaner, a constant script runs *as the runtime user* (isolated Python, a deadline). It opens
every folder and file without following links and works through descriptors from there.

The guard against a torn copy is the overlay's lock, `overlay.lock`, which the holder job takes
(flock, exclusive) before it mounts the overlay writable and keeps for its life. The script takes
the same lock, without waiting, before it reads the overlay, and keeps it until the snapshot is in
place: a lock already taken means a job holds the overlay, and nothing is copied ("busy"); a holder
that starts during the copy waits for the lock (holder.sh waits up to HOLDER_LOCK_WAIT_S, longer
than the copy's deadline), so it never mounts an overlay being read. Besides, Apptainer itself
holds a write lock (an OFD byte-range lock) on an overlay it mounts writable: the script takes a
read lock on the whole image for the copy, so an instance that outlived its holder job (or one
started by hand) also means "busy", and none can mount the image writable while it is read. A
copy killed at its deadline leaves only a temporary file (`.tmp-snap-*`), which the next run
removes.

The copy is sparse: a reflink where the filesystem has them, else the overlay's data extents
(SEEK_DATA/SEEK_HOLE) with blocks of zeros left as holes. It is written under a temporary name,
fsynced, made read-only (0400) and only then renamed into place, and the folder fsynced.

Access: the container's folder and `snapshots/` get a traverse-only entry (`--x`) for each uid
granted, every kept snapshot a read entry (`r--`); the whole ACL is set (so an uid no longer
granted loses its entries), on descriptors, nothing else in the folder.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from rxslurm.daemon.runtime.user_script import run_script, script_answer, script_argv
from rxslurm.slurm.runas import RunAs

# A big overlay on a slow shared filesystem takes a while; holder.sh waits longer than this
# for the lock (HOLDER_LOCK_WAIT_S there), so a wake during a copy never fails, it waits.
SNAPSHOT_TIMEOUT_S = 600.0
HOLDER_LOCK_WAIT_S = 900
ACCESS_TIMEOUT_S = 30.0
SNAPSHOTS_FOLDER = "snapshots"


# Run as the runtime user by `python -I -S -c`, the standard library only. argv: the container's
# folder; "take", "access" (ACLs only) or "clear" (ACLs and pruning, no copy); the new snapshot's
# file name (take); the snapshot names to keep besides it and those kept too when nothing new is
# taken (comma-separated); the uids to grant (comma-separated); the overlay's modification time
# (ns) when the newest snapshot was taken ("": copy whatever it is). stdout: one JSON line.
SCRIPT = r"""
import errno, fcntl, json, os, re, stat, struct, sys
folder, mode, new, keep, extra, uids, last = sys.argv[1:8]
keep = {k for k in keep.split(",") if k}
extra = {k for k in extra.split(",") if k}
uids = sorted({int(u) for u in uids.split(",") if u})
NAME = re.compile(r"snap-[0-9]{1,24}\.img", re.ASCII)
FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
me = os.getuid()
answer = {}

def done(**fields):
    answer.update(fields)
    print(json.dumps(answer))
    sys.exit(0)

def own_folder(name, dir_fd=None):
    fd = os.open(name, FLAGS | os.O_DIRECTORY, dir_fd=dir_fd)
    if os.fstat(fd).st_uid != me:
        done(error=name + " is not the runtime user's")
    return fd

def acl(fd, mode_bits, named):
    # The whole POSIX ACL (system.posix_acl_access, version 2): owner, one entry per named uid,
    # no group, the mask, no others. No named uid: no ACL at all, the mode alone.
    if not named:
        try:
            os.removexattr(fd, "system.posix_acl_access")
        except OSError as e:
            if e.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
                raise
        os.fchmod(fd, mode_bits[0] << 6)
        return
    none = 0xFFFFFFFF
    entries = [(0x01, mode_bits[0], none)]
    entries += [(0x02, mode_bits[1], uid) for uid in named]
    entries += [(0x04, 0, none), (0x10, mode_bits[1], none), (0x20, 0, none)]
    blob = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    os.setxattr(fd, "system.posix_acl_access", blob)

def copy(src, dst, size):
    try:
        fcntl.ioctl(dst, 0x40049409, src)  # FICLONE: a reflink, where the filesystem has them
        return
    except OSError:
        pass
    zeros = bytes(1 << 20)
    pos = 0
    while pos < size:
        try:
            start = os.lseek(src, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break  # only a hole is left
            raise
        end = os.lseek(src, start, os.SEEK_HOLE)
        while start < end:
            chunk = os.pread(src, min(len(zeros), end - start), start)
            if not chunk:
                break
            if chunk != zeros[: len(chunk)]:
                view = memoryview(chunk)
                written = 0
                while written < len(chunk):
                    written += os.pwrite(dst, view[written:], start + written)
            start += len(chunk)
        pos = end
    os.ftruncate(dst, size)

try:
    d = own_folder(folder)
    try:
        os.mkdir("snapshots", 0o700, dir_fd=d)
    except FileExistsError:
        pass
    s = own_folder("snapshots", dir_fd=d)
    if mode == "take":
        # Non-blocking: a FIFO planted in its place fails at once instead of holding the copy
        # thread until the deadline.
        lock = os.open("overlay.lock",
                       os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                       0o600, dir_fd=d)
        if not stat.S_ISREG(os.fstat(lock).st_mode):
            done(error="overlay.lock is not a regular file")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            done(busy=True)
        src = os.open("overlay.img", FLAGS | os.O_NONBLOCK, dir_fd=d)
        info = os.fstat(src)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != me:
            done(error="overlay.img is not the runtime user's regular file")
        # Apptainer holds a write lock (OFD) on an overlay it mounts writable: one that outlived
        # its holder job, or one started by hand, has it without holding overlay.lock.
        try:
            fcntl.fcntl(src, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_RDLCK, 0, 0, 0, 0))
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                done(busy=True)
            raise
        answer["mtime_ns"] = info.st_mtime_ns
        if last and int(last) == info.st_mtime_ns:
            answer["unchanged"] = True
            keep |= extra
        else:
            if not NAME.fullmatch(new):
                done(error="bad snapshot name")
            tmp = ".tmp-" + new
            try:
                os.unlink(tmp, dir_fd=s)
            except FileNotFoundError:
                pass
            dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                          0o600, dir_fd=s)
            copy(src, dst, info.st_size)
            os.fsync(dst)
            os.fchmod(dst, 0o400)
            os.rename(tmp, new, src_dir_fd=s, dst_dir_fd=s)
            os.fsync(s)
            answer.update(taken=new, size=info.st_size, disk=os.fstat(dst).st_blocks * 512)
            os.close(dst)
            keep.add(new)
    removed, skipped = [], []
    # "access" runs beside a copy (a change of members): what to prune is for "take" and
    # "clear" alone, which rxd never runs at once for a container.
    for name in os.listdir(s) if mode != "access" else ():
        if not (NAME.fullmatch(name) and name not in keep or name.startswith(".tmp-snap-")):
            continue
        try:
            entry = os.stat(name, dir_fd=s, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(entry.st_mode) or entry.st_uid != me:
            skipped.append(name)
            continue
        os.unlink(name, dir_fd=s)
        removed.append(name)
    granted = []
    for name in sorted(keep):
        try:
            f = os.open(name, FLAGS | os.O_NONBLOCK, dir_fd=s)
        except FileNotFoundError:
            continue
        entry = os.fstat(f)
        if stat.S_ISREG(entry.st_mode) and entry.st_uid == me:
            acl(f, (4, 4), uids)
            granted.append(name)
        os.close(f)
    acl(s, (7, 1), uids)
    acl(d, (7, 1), uids)
    os.fsync(s)
    done(removed=sorted(removed), skipped=sorted(skipped), granted=granted)
except OSError as e:
    done(error=(e.filename + ": " if isinstance(e.filename, str) else "") + os.strerror(e.errno))
"""


class SnapshotError(Exception):
    """The script could not run or refused; the message says why."""


@dataclass(frozen=True)
class Outcome:
    busy: bool = False  # a job holds the overlay: nothing was copied
    unchanged: bool = False  # the overlay is as it was when the newest snapshot was taken
    taken: str | None = None  # the new snapshot's file name
    size: int = 0  # its apparent size (the overlay's)
    disk: int = 0  # what it takes on disk (sparse)
    mtime_ns: int | None = None  # the overlay's modification time when read
    removed: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()  # named like a snapshot but not the user's regular files


def snapshot_argv(
    state_dir: str,
    mode: str,
    new: str,
    keep: Collection[str],
    uids: Collection[int],
    last_mtime_ns: int | None,
    keep_if_unchanged: Collection[str] = (),
) -> list[str]:
    names = [*keep, *keep_if_unchanged, new]
    if any("," in n or "/" in n for n in names):
        raise ValueError("a snapshot's file name holds no ',' or '/'")
    return script_argv(
        SCRIPT,
        state_dir,
        mode,
        new,
        ",".join(sorted(keep)),
        ",".join(sorted(keep_if_unchanged)),
        ",".join(str(int(u)) for u in sorted(set(uids))),
        "" if last_mtime_ns is None else str(int(last_mtime_ns)),
    )


def take(
    state_dir: str,
    new: str,
    keep: Collection[str],
    uids: Collection[int],
    last_mtime_ns: int | None,
    as_user: RunAs | None,
    timeout: float = SNAPSHOT_TIMEOUT_S,
    *,
    keep_if_unchanged: Collection[str] = (),
) -> Outcome:
    """Copy the overlay of the container in ``state_dir`` to ``snapshots/<new>`` unless a job
    holds it (busy) or it is unchanged since ``last_mtime_ns``; then remove snapshots not in
    ``keep`` (and, when nothing new was taken, ``keep_if_unchanged``) and grant ``uids`` read
    on the kept ones. As ``as_user`` (None: this process)."""
    argv = snapshot_argv(state_dir, "take", new, keep, uids, last_mtime_ns, keep_if_unchanged)
    return _run(argv, as_user, timeout)


def set_access(
    state_dir: str,
    keep: Collection[str],
    uids: Collection[int],
    as_user: RunAs | None,
    timeout: float = ACCESS_TIMEOUT_S,
) -> Outcome:
    """Only the ACLs of ``take`` (after a change of members): nothing is removed, so it may run
    while a snapshot is being taken."""
    return _run(snapshot_argv(state_dir, "access", "", keep, uids, None), as_user, timeout)


def clear(state_dir: str, as_user: RunAs | None, timeout: float = ACCESS_TIMEOUT_S) -> Outcome:
    """Remove every snapshot of the container (its overlay went); never while one is taken."""
    return _run(snapshot_argv(state_dir, "clear", "", (), (), None), as_user, timeout)


def _run(argv: list[str], as_user: RunAs | None, timeout: float) -> Outcome:
    result = run_script(
        argv,
        as_user=as_user,
        timeout=timeout,
        doing="the overlay snapshot",
        name="snapshot script",
        error=SnapshotError,
    )
    return parse_output(result.returncode, result.stdout, result.stderr)


def parse_output(returncode: int, stdout: str, stderr: str = "") -> Outcome:
    answer = script_answer(
        returncode, stdout, stderr, failed="overlay snapshot failed", error=SnapshotError
    )
    try:
        return Outcome(
            busy=_flag(answer, "busy"),
            unchanged=_flag(answer, "unchanged"),
            taken=_text_or_none(answer.get("taken")),
            size=_count(answer.get("size", 0)),
            disk=_count(answer.get("disk", 0)),
            mtime_ns=None if answer.get("mtime_ns") is None else _count(answer["mtime_ns"]),
            removed=_names(answer.get("removed", [])),
            skipped=_names(answer.get("skipped", [])),
        )
    except (TypeError, ValueError):
        raise SnapshotError("overlay snapshot failed: the script's answer is malformed") from None


def _flag(answer: dict[str, object], key: str) -> bool:
    value = answer.get(key, False)
    if not isinstance(value, bool):
        raise TypeError(key)
    return value


def _text_or_none(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError("taken")


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("count")
    return value


def _names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise TypeError("names")
    return tuple(value)
