"""Files in a project's workspace (`/workspace` in its container), read and written for the
research platform as the project's runtime user.

The workspace folder is the runtime user's, and so is everything below it: they (or anything in
the container) can put a symbolic link to `/etc/shadow` there, or swap a folder for a link while
rxd works. So root never opens anything below the workspace: a constant script runs AS THE RUNTIME
USER (runtime/user_script.py) and walks the path one folder at a time with openat and O_NOFOLLOW,
so no link is followed at any step, and `..` never reaches it (check_path refuses it first, and the
script refuses it again). A write goes to a new file beside the target, then replaces it by rename:
a reader never sees half a file, and a link at the target's name is refused, not written through.
What the runtime user may not do, rxd does not do for them. Contents cross the pipes as base64.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from rxslurm.daemon.config import Config
from rxslurm.daemon.errors import ApiError, BadRequest, Forbidden, NotFound
from rxslurm.daemon.identity.actors import Actor, record_actor_event
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.daemon.projects.roles import Action
from rxslurm.daemon.projects.service import authorize, require_runtime_identity
from rxslurm.daemon.projects.workspaces import WRITE_ROLES
from rxslurm.daemon.runtime.user_script import run_script, script_answer, script_argv
from rxslurm.slurm.runas import RunAs

# A read answers at most this much; a write takes at most the API's request body.
MAX_READ = 16 * 1024 * 1024
MAX_PATH = 4096
MAX_NAME = 255
SCRIPT_TIMEOUT_S = 30.0

WALK = r"""
import base64, errno, json, os, stat, sys
def say(**head):
    print(json.dumps(head)); sys.exit(0)
def refuse(what, e):
    link = e.errno in (errno.ELOOP, errno.ENOTDIR)
    say(kind="refused", why=what + (" is a symbolic link or not a folder" if link
                                    else ": " + os.strerror(e.errno)))
DIR = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
folder, rel, most = sys.argv[1], sys.argv[2], int(sys.argv[3])
parts = rel.split("/")
if any(p in ("", ".", "..") for p in parts):
    say(kind="refused", why="the path has an empty, . or .. part")
try:
    d = os.open(folder, DIR)
except OSError as e:
    refuse("the workspace", e)
*parents, name = parts
def walk(create):
    global d
    for part in parents:
        if create:
            try:
                os.mkdir(part, 0o777, dir_fd=d)
            except FileExistsError:
                pass
            except OSError as e:
                refuse(part, e)
        try:
            below = os.open(part, DIR, dir_fd=d)
        except FileNotFoundError:
            say(kind="missing")
        except OSError as e:
            refuse(part, e)
        os.close(d)
        d = below
"""

READER = (
    WALK
    + r"""
walk(False)
try:
    f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                dir_fd=d)
except FileNotFoundError:
    say(kind="missing")
except OSError as e:
    refuse(name, e)
info = os.fstat(f)
if not stat.S_ISREG(info.st_mode):
    say(kind="refused", why=name + " is not a regular file")
if info.st_size > most:
    say(kind="too_big", size=info.st_size)
data = b""
while len(data) <= most:
    chunk = os.read(f, most + 1 - len(data))
    if not chunk:
        break
    data += chunk
if len(data) > most:
    say(kind="too_big", size=len(data))
print(json.dumps({"kind": "read", "size": len(data)}))
print(base64.b64encode(data).decode())
"""
)

WRITER = (
    WALK
    + r"""
try:
    data = base64.b64decode(sys.stdin.read(), validate=True)
except ValueError:
    say(kind="refused", why="the contents did not arrive whole")
if len(data) > most:
    say(kind="too_big", size=len(data))
walk(True)
try:
    info = os.stat(name, dir_fd=d, follow_symlinks=False)
except FileNotFoundError:
    pass
except OSError as e:
    refuse(name, e)
else:
    if not stat.S_ISREG(info.st_mode):
        say(kind="refused", why=name + " is not a regular file")
temp = ".rx-upload-" + os.urandom(8).hex()
f = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666,
            dir_fd=d)
try:
    view = memoryview(data)
    while view:
        view = view[os.write(f, view):]
    os.fsync(f)
    os.close(f)
    os.rename(temp, name, src_dir_fd=d, dst_dir_fd=d)
except OSError as e:
    os.unlink(temp, dir_fd=d)
    refuse(name, e)
say(kind="written", size=len(data))
"""
)


class FileTooBig(ApiError):
    status = 413
    code = "too_big"


class BadPath(BadRequest):
    pass


def check_path(path: object) -> str:
    """A file's path below the workspace as given (relative, '/'-separated), or BadPath: never
    absolute, no empty, `.` or `..` part, no NUL, names and the whole within Linux's limits."""
    if not isinstance(path, str) or not path:
        raise BadPath("path must name a file below /workspace, relative to it")
    try:
        size = len(path.encode())
    except UnicodeEncodeError:
        raise BadPath("path must be valid Unicode (no lone surrogates)") from None
    if "\0" in path:
        raise BadPath("path must not contain NUL bytes")
    if size > MAX_PATH:
        raise BadPath(f"path is longer than {MAX_PATH} bytes")
    if path.startswith("/"):
        raise BadPath("path must be relative to /workspace, not absolute")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise BadPath("path must not have empty, . or .. parts")
    if any(len(part.encode()) > MAX_NAME for part in parts):
        raise BadPath(f"a name in path is longer than {MAX_NAME} bytes")
    return path


@dataclass(frozen=True)
class Workspace:
    """Where a project's files are and whom they are worked on as."""

    folder: str
    runas: RunAs | None  # None: as this process (tests)


class WorkspaceFileError(ApiError):
    status = 503
    code = "unavailable"


def _answer(workspace: Workspace, script: str, path: str, most: int, data: str | None) -> str:
    """The script's stdout; its first line is a JSON head (see _head)."""
    doing = "reading the file" if data is None else "writing the file"
    result = run_script(
        script_argv(script, workspace.folder, check_path(path), str(most)),
        as_user=workspace.runas,
        timeout=SCRIPT_TIMEOUT_S,
        doing=doing,
        name="file script",
        error=WorkspaceFileError,
        input=data,
    )
    if result.returncode != 0:
        why = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "it failed"
        raise WorkspaceFileError(f"{doing} failed: {why}")
    return result.stdout


def _head(stdout: str, doing: str, path: str) -> dict[str, object]:
    head = script_answer(0, stdout.partition("\n")[0], "", failed=doing, error=WorkspaceFileError)
    kind = head.get("kind")
    if kind == "missing":
        raise NotFound(f"no file {path} in /workspace")
    if kind == "refused":
        raise BadPath(f"refused {path}: {head.get('why')}")
    if kind == "too_big":
        raise FileTooBig(f"{path} is larger than the limit")
    return head


def read_file(workspace: Workspace, path: str, most: int = MAX_READ) -> bytes:
    stdout = _answer(workspace, READER, path, most, None)
    head = _head(stdout, "reading the file", path)
    if head.get("kind") != "read":
        raise WorkspaceFileError("reading the file failed: the reader's answer is malformed")
    try:
        data = base64.b64decode(stdout.partition("\n")[2].strip(), validate=True)
    except ValueError:
        raise WorkspaceFileError(
            "reading the file failed: the reader's answer is malformed"
        ) from None
    return data


def write_file(workspace: Workspace, path: str, data: bytes, most: int) -> int:
    if len(data) > most:
        raise FileTooBig(f"the contents are larger than {most} bytes")
    stdout = _answer(workspace, WRITER, path, most, base64.b64encode(data).decode())
    head = _head(stdout, "writing the file", path)
    size = head.get("size")
    if head.get("kind") != "written" or not isinstance(size, int):
        raise WorkspaceFileError("writing the file failed: the writer's answer is malformed")
    return size


def workspace_for(
    ledger: Ledger, config: Config, actor: Actor, project: str, *, write: bool
) -> Workspace:
    """The project's workspace, if the actor's role lets them read it (every member: viewers
    have r-x on it) or write it (the roles the workspace's ACLs give rwx); else 404/403."""
    with ledger.read() as db:
        row, role = authorize(db, actor, project, Action.VIEW)
        if write and role not in WRITE_ROLES:
            raise Forbidden(
                f"a {role} of {project} may read its workspace, not write it "
                f"(writing takes {', '.join(sorted(WRITE_ROLES))})"
            )
        user = require_runtime_identity(db, config, row)
    return Workspace(row["workspace"], RunAs.for_user(user))


def record_file_event(
    ledger: Ledger, actor: Actor, project: str, action: str, path: str, size: int
) -> None:
    with ledger.transaction() as db:
        record_actor_event(
            db, actor, action, "project", project, {"door": "platform", "path": path, "size": size}
        )
