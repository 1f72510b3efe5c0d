"""Listing and removing what garbage collection may take from a container's folder, as the
runtime user.

The folder is the runtime user's, so root never reads or deletes there: like the job-log cleaner,
a constant script runs *as the runtime user* (isolated Python, a deadline). It opens the folder
and `snapshots/` without following links and considers only entries named as rx-slurm names its
own files: overlay backups (`overlay.img.before-<tag>`, left by a reset or an import, and a
failed reset's `.new-overlay-*.img`), holder job
logs and status files (`job-<N>.out`, `job-<N>.status`), overlay snapshots
(`snapshots/snap-<N>.img`) and leftovers, folders removed whole: what a `start --fresh` cut
short left (`.fresh-*`) and a killed import's folder (`import-<stamp>`). "list" answers each
one's kind, size on disk and change time;
"remove" unlinks the names rxd chose, each only if it still is a regular file of that user (or,
for a leftover, a folder of that user, removed through descriptors).
A symbolic link, a FIFO or a folder under such a name is never followed and is listed as
skipped. What goes is rxd's decision (containers/gc.py), from the ledger.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from rxslurm.daemon.runtime.user_script import run_script, script_answer, script_argv
from rxslurm.slurm.runas import RunAs

GC_TIMEOUT_S = 30.0

# Run as the runtime user by `python -I -S -c`, the standard library only. argv: the container's
# folder, "list" or "remove", and (remove) the names to remove, comma-separated, each relative to
# the folder ("snapshots/snap-N.img" for a snapshot). stdout: one JSON line.
SCRIPT = r"""
import json, os, re, shutil, stat, sys
folder, mode, names = sys.argv[1], sys.argv[2], sys.argv[3]
PATTERNS = (
    ("backup", re.compile(r"overlay\.img\.before-[A-Za-z0-9._-]{1,64}", re.ASCII)),
    # A reset's new overlay left by a reset that failed (runtime/overlay_reset.py).
    ("backup", re.compile(r"\.new-overlay-[0-9a-f]{8,32}\.img", re.ASCII)),
    ("job-log", re.compile(r"job-[0-9]{1,18}\.out", re.ASCII)),
    ("job-status", re.compile(r"job-[0-9]{1,18}\.status", re.ASCII)),
)
# Leftovers, each a folder removed whole (through descriptors, no link followed) or a file: what a
# `start --fresh` cut short by its deadline left (runtime/fresh_state.py), and the folder of an
# import whose script was killed (runtime/archive_import.py).
LEFTOVERS = (
    ("fresh-leftover", re.compile(r"\.fresh-(?:apptainer|home)-[0-9a-f]{12}", re.ASCII)),
    ("import-leftover", re.compile(r"import-[0-9]{1,24}", re.ASCII)),
)
SNAP = re.compile(r"snap-[0-9]{1,24}\.img", re.ASCII)
FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
me = os.getuid()

def kind_of(rel):
    if rel.startswith("snapshots/"):
        return "snapshot" if SNAP.fullmatch(rel[len("snapshots/"):]) else None
    for kind, pattern in PATTERNS:
        if pattern.fullmatch(rel):
            return kind
    for kind, pattern in LEFTOVERS:
        if pattern.fullmatch(rel):
            return kind
    return None

def tree_facts(dir_fd, name, top):
    # A folder and everything below it, walked through descriptors (os.fwalk, no link followed):
    # the blocks it takes, and its newest change (a live script still writes somewhere in it).
    total, newest = top.st_blocks * 512, top.st_ctime
    for _, dirs, files, fd in os.fwalk(name, dir_fd=dir_fd, follow_symlinks=False):
        for entry in dirs + files:
            try:
                info = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            total += info.st_blocks * 512
            newest = max(newest, info.st_ctime, info.st_mtime)
    return total, newest

try:
    d = os.open(folder, FLAGS)
except OSError as e:
    print(json.dumps({"error": "its folder: " + os.strerror(e.errno)})); sys.exit(0)
if os.fstat(d).st_uid != me:
    print(json.dumps({"error": "its folder is not the runtime user's"})); sys.exit(0)
try:
    s = os.open("snapshots", FLAGS, dir_fd=d)
    if os.fstat(s).st_uid != me:
        os.close(s); s = None
except OSError:
    s = None

def where(rel):
    if rel.startswith("snapshots/"):
        return (s, rel[len("snapshots/"):]) if s is not None else (None, None)
    return d, rel

items, removed, skipped, failed = [], [], [], []
if mode == "list":
    rels = list(os.listdir(d))
    if s is not None:
        rels += ["snapshots/" + n for n in os.listdir(s)]
else:
    rels = [n for n in names.split(",") if n]
for rel in sorted(rels):
    kind = kind_of(rel)
    if kind is None:
        if mode == "remove":
            skipped.append(rel)
        continue
    dir_fd, name = where(rel)
    if dir_fd is None:
        continue
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        continue
    whole_folder = kind.endswith("-leftover") and stat.S_ISDIR(info.st_mode)
    if not (stat.S_ISREG(info.st_mode) or whole_folder) or info.st_uid != me:
        skipped.append(rel); continue
    if mode == "list":
        if whole_folder:
            size, changed = tree_facts(dir_fd, name, info)
        else:
            size, changed = info.st_blocks * 512, info.st_ctime
        items.append({"name": rel, "kind": kind, "bytes": size, "changed": int(changed)})
        continue
    # The folder is this user's own: an entry swapped meanwhile for a link is unlinked itself,
    # never followed; a folder goes through descriptors (shutil.rmtree with dir_fd).
    try:
        if whole_folder:
            shutil.rmtree(name, dir_fd=dir_fd)
        else:
            os.unlink(name, dir_fd=dir_fd)
        removed.append(rel)
    except FileNotFoundError:
        pass
    except OSError as e:
        failed.append(rel + ": " + os.strerror(e.errno))
print(json.dumps({"items": items, "removed": removed, "skipped": skipped, "failed": failed}))
"""

KINDS = ("backup", "job-log", "job-status", "snapshot", "fresh-leftover", "import-leftover")


class StateGcError(Exception):
    """The script could not run or refused; the message says why."""


@dataclass(frozen=True)
class Entry:
    name: str  # relative to the container's folder
    kind: str  # one of KINDS
    bytes: int  # on disk
    changed: int  # change time, seconds since the epoch (a rename to a backup name sets it; a
    # leftover folder's: the newest change of anything in it)


@dataclass(frozen=True)
class Listing:
    items: tuple[Entry, ...] = ()
    removed: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()  # named as rx-slurm's but not the user's regular files
    failed: tuple[str, ...] = ()  # "name: why"


def gc_argv(state_dir: str, mode: str, names: Collection[str] = ()) -> list[str]:
    if mode not in ("list", "remove"):
        raise ValueError(f"not a mode: {mode!r}")
    if any("," in n for n in names):
        raise ValueError("a name to remove holds no ','")
    return script_argv(SCRIPT, state_dir, mode, ",".join(sorted(names)))


def list_entries(state_dir: str, as_user: RunAs | None, timeout: float = GC_TIMEOUT_S) -> Listing:
    """What in ``state_dir`` gc may consider, as ``as_user`` (None: this process, for tests)."""
    return _run(gc_argv(state_dir, "list"), as_user, timeout)


def remove_entries(
    state_dir: str, names: Collection[str], as_user: RunAs | None, timeout: float = GC_TIMEOUT_S
) -> Listing:
    """Unlink ``names`` (as listed) in ``state_dir`` as ``as_user``."""
    if not names:
        return Listing()
    return _run(gc_argv(state_dir, "remove", names), as_user, timeout)


def _run(argv: list[str], as_user: RunAs | None, timeout: float) -> Listing:
    result = run_script(
        argv,
        as_user=as_user,
        timeout=timeout,
        doing="garbage collection in a container's folder",
        name="gc script",
        error=StateGcError,
    )
    return parse_output(result.returncode, result.stdout, result.stderr)


def parse_output(returncode: int, stdout: str, stderr: str = "") -> Listing:
    answer = script_answer(
        returncode, stdout, stderr, failed="cannot collect garbage", error=StateGcError
    )
    try:
        items = tuple(_entry(i) for i in answer.get("items", []))
        return Listing(
            items=items,
            removed=_names(answer.get("removed", [])),
            skipped=_names(answer.get("skipped", [])),
            failed=_names(answer.get("failed", [])),
        )
    except (TypeError, ValueError, KeyError):
        raise StateGcError("cannot collect garbage: the script's answer is malformed") from None


def _entry(item: object) -> Entry:
    if not isinstance(item, dict):
        raise TypeError("item")
    name, kind, size, changed = item["name"], item["kind"], item["bytes"], item["changed"]
    if not isinstance(name, str) or kind not in KINDS:
        raise ValueError("item")
    for n in (size, changed):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError("count")
    return Entry(name, kind, size, changed)


def _names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise TypeError("names")
    return tuple(value)
