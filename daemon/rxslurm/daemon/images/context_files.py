"""Build contexts uploaded through the API (the SDK's `Image.add_local_file`/`add_local_dir`): a
caller whose files are not on rxd's hosts sends them chunk by chunk, and rxd writes them into
`<workspace>/.rx-build-contexts/<context>/` where a draft's build job reads them.

The workspace is the runtime user's, so every write and removal is a constant script run AS THE
RUNTIME USER that walks each path one folder at a time with O_NOFOLLOW (projects/workspace_files.py
WALK): root never opens a path below the workspace, and no link is followed. A file is written to a
part file beside it, appended chunk by chunk (each chunk must start where the part ends), and
renamed over its name with the last chunk, so a build never copies half a file. The whole
context is capped (`[builds] max_context_mb`), counted by the script before each chunk.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from rxslurm.daemon.config import Config
from rxslurm.daemon.errors import BadRequest, Conflict, NotFound
from rxslurm.daemon.identity.actors import Actor, record_actor_event
from rxslurm.daemon.images import drafts
from rxslurm.daemon.images.gates import require_builds_enabled
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.daemon.projects import workspace_files as files
from rxslurm.daemon.projects.roles import Action
from rxslurm.daemon.projects.service import authorize, require_runtime_identity
from rxslurm.daemon.runtime.user_script import run_script, script_answer, script_argv
from rxslurm.protocol import build_context
from rxslurm.slurm.runas import RunAs

CHUNK_FIELDS = ("path", "offset", "data", "last", "executable")

WRITER = (
    files.WALK
    + r"""
import hashlib
offset, last = int(sys.argv[4]), sys.argv[5] == "1"
context, mode = sys.argv[6], 0o755 if sys.argv[7] == "1" else 0o644
try:
    data = base64.b64decode(sys.stdin.read(), validate=True)
except ValueError:
    say(kind="refused", why="the contents did not arrive whole")
# Both refusals come before the walk, which makes the path's folders: a refused chunk changes
# nothing. The context's size so far, counted through descriptors from the workspace as the walk
# goes (no link followed, none counted): this process is the runtime user, but a link to a large
# tree must be refused, not walked until the deadline.
def context_size():
    c = os.dup(d)
    for part in context.split("/"):
        try:
            below = os.open(part, DIR, dir_fd=c)
        except FileNotFoundError:
            os.close(c)
            return 0
        except OSError as e:
            refuse(part, e)
        os.close(c)
        c = below
    size = 0
    for _, _, names, fd in os.fwalk(".", dir_fd=c, follow_symlinks=False):
        for n in names:
            try:
                size += os.stat(n, dir_fd=fd, follow_symlinks=False).st_size
            except OSError:
                pass
    os.close(c)
    return size
total = context_size()
if total + len(data) > most:
    say(kind="too_big", size=total + len(data))
# Only a file's first chunk makes folders; for a later one a missing folder is a missing file.
walk(offset == 0)
part = ".rx-part-" + hashlib.sha256(name.encode()).hexdigest()[:16]
flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
try:
    if offset == 0:
        f = os.open(part, flags | os.O_CREAT | os.O_TRUNC, mode, dir_fd=d)
    else:
        f = os.open(part, flags | os.O_APPEND, dir_fd=d)
except FileNotFoundError:
    say(kind="offset", have=0)
except OSError as e:
    refuse(name, e)
info = os.fstat(f)
if not stat.S_ISREG(info.st_mode):
    say(kind="refused", why=name + " is not a regular file")
if info.st_size != offset:
    say(kind="offset", have=info.st_size)
if offset == 0:
    os.fchmod(f, mode)
view = memoryview(data)
while view:
    view = view[os.write(f, view):]
os.close(f)
if last:
    try:
        there = os.stat(name, dir_fd=d, follow_symlinks=False)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISDIR(there.st_mode):
            say(kind="refused", why=name + " is a folder")
    os.rename(part, name, src_dir_fd=d, dst_dir_fd=d)
say(kind="written", size=offset + len(data))
"""
)

REMOVER = (
    files.WALK
    + r"""
import shutil
walk(False)
try:
    info = os.stat(name, dir_fd=d, follow_symlinks=False)
except FileNotFoundError:
    say(kind="missing")
if not stat.S_ISDIR(info.st_mode):
    say(kind="refused", why=name + " is not a folder")
# rmtree with dir_fd works on file descriptors and never follows a link.
shutil.rmtree(name, dir_fd=d)
say(kind="removed")
"""
)


@dataclass(frozen=True)
class Chunk:
    path: str
    offset: int
    data: bytes
    last: bool
    executable: bool = False


def parse_chunk(body: dict[str, Any]) -> Chunk:
    """One upload request's body, checked: `{path, offset, data (base64), last, executable?}`
    (`executable`: the file is made 0755, else 0644, with its first chunk)."""
    path = files.check_path(body.get("path"))
    offset = body.get("offset")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise BadRequest("offset must be a whole number of bytes, 0 or more")
    last = body.get("last")
    if not isinstance(last, bool):
        raise BadRequest("last must be true or false")
    text = body.get("data")
    if not isinstance(text, str):
        raise BadRequest("data must be the chunk's bytes in base64")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("data is not valid base64") from None
    if len(data) > build_context.CHUNK_BYTES:
        raise BadRequest(f"a chunk is at most {build_context.CHUNK_BYTES} bytes")
    executable = body.get("executable", False)
    if not isinstance(executable, bool):
        raise BadRequest("executable must be true or false")
    return Chunk(path, offset, data, last, executable)


def _workspace(ledger: Ledger, config: Config, actor: Actor, project: str) -> files.Workspace:
    """The project's workspace, for an actor who may build there (editors and above)."""
    require_builds_enabled(config)
    with ledger.read() as db:
        row, _ = authorize(db, actor, project, Action.BUILD)
        user = require_runtime_identity(db, config, row)
    if not row["workspace"]:
        raise Conflict(f"project {project} has no workspace to build from")
    return files.Workspace(row["workspace"], RunAs.for_user(user))


def _run(workspace: files.Workspace, script: str, rel: str, *args: str, data: str | None) -> Any:
    doing = "writing the build context" if data is not None else "removing the build context"
    result = run_script(
        script_argv(script, workspace.folder, rel, *args),
        as_user=workspace.runas,
        timeout=files.SCRIPT_TIMEOUT_S,
        doing=doing,
        name="build context script",
        error=files.WorkspaceFileError,
        input=data,
    )
    if result.returncode != 0:
        why = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "it failed"
        raise files.WorkspaceFileError(f"{doing} failed: {why}")
    first = result.stdout.partition("\n")[0]
    return script_answer(0, first, "", failed=doing, error=files.WorkspaceFileError)


def put_chunk(workspace: files.Workspace, context: str, chunk: Chunk, most: int) -> int:
    """Append one chunk to a file of the context (the last one puts the file in place), as the
    workspace's user; the file's size so far."""
    folder = build_context.draft_context(drafts.check_name("context", context))
    head = _run(
        workspace,
        WRITER,
        f"{folder}/{chunk.path}",
        str(most),
        str(chunk.offset),
        "1" if chunk.last else "0",
        # The context's folder (in the workspace), for the script's count of what it holds.
        folder,
        "1" if chunk.executable else "0",
        data=base64.b64encode(chunk.data).decode(),
    )
    kind = head.get("kind")
    if kind in ("offset", "missing"):  # missing: a folder of its path is not there
        raise Conflict(
            f"{chunk.path} of build context {context} has {head.get('have', 0)} bytes, not "
            f"{chunk.offset}: send it again from the start (offset 0)"
        )
    if kind == "too_big":
        raise files.FileTooBig(f"build context {context} would exceed {most} bytes")
    _refused(head, chunk.path)
    size = head.get("size")
    if kind != "written" or not isinstance(size, int):
        raise files.WorkspaceFileError("writing the build context failed: a malformed answer")
    return size


def remove_folder(workspace: files.Workspace, context: str) -> str:
    """Remove an uploaded context as the workspace's user; its folder (NotFound if none)."""
    folder = build_context.draft_context(drafts.check_name("context", context))
    head = _run(workspace, REMOVER, folder, "0", data=None)
    if head.get("kind") == "missing":
        raise NotFound(f"there is no uploaded build context {context}")
    _refused(head, folder)
    return folder


def write_chunk(
    ledger: Ledger, config: Config, actor: Actor, project: str, context: str, chunk: Chunk
) -> dict[str, Any]:
    """The API's upload of one chunk: checked, written, audited."""
    workspace = _workspace(ledger, config, actor, project)
    try:
        size = put_chunk(workspace, context, chunk, config.builds.max_context_mb * 1024 * 1024)
    except files.FileTooBig:
        raise files.FileTooBig(
            f"build context {context} would exceed {config.builds.max_context_mb} MiB "
            "([builds] max_context_mb)"
        ) from None
    with ledger.transaction() as db:
        record_actor_event(
            db,
            actor,
            "image.context-written",
            "project",
            project,
            {
                "context": context,
                "path": chunk.path,
                "offset": chunk.offset,
                "size": size,
                "complete": chunk.last,
            },
        )
    return {
        "project": project,
        "context": build_context.draft_context(context),
        "path": chunk.path,
        "size": size,
        "complete": chunk.last,
    }


def remove_context(
    ledger: Ledger, config: Config, actor: Actor, project: str, context: str
) -> dict[str, Any]:
    """The API's removal of an uploaded context (build jobs copied it when they started)."""
    workspace = _workspace(ledger, config, actor, project)
    folder = remove_folder(workspace, context)
    with ledger.transaction() as db:
        record_actor_event(
            db, actor, "image.context-deleted", "project", project, {"context": context}
        )
    return {"project": project, "deleted": folder}


def _refused(head: dict[str, Any], path: str) -> None:
    if head.get("kind") == "refused":
        raise files.BadPath(f"refused {path}: {head.get('why')}")
