"""rxd's API routes, as aiohttp patterns: the daemon's route table and rxctl's requests use these.

A client fills a pattern with `path()`, which quotes each value as one path segment, so a name
can never reach another route. docs/api.md describes each route.
"""

from __future__ import annotations

V1 = "/v1"

WHOAMI = f"{V1}/whoami"
HEALTH = f"{V1}/health"

BIND = f"{V1}/bind"
UNBIND = f"{V1}/unbind"

PROJECTS = f"{V1}/projects"
PROJECT = f"{PROJECTS}/{{name}}"
PROJECT_SETTINGS = f"{PROJECT}/settings"
PROJECT_RUN_AS = f"{PROJECT}/run-as"
PROJECT_MEMBERS = f"{PROJECT}/members"
PROJECT_MEMBER = f"{PROJECT_MEMBERS}/{{user}}"
# The owner's switch for image builds in the project (docs/images.md).
PROJECT_DEV_MODE = f"{PROJECT}/dev-mode"
# A project's environment variables (GET: names and values; PATCH: {"set": {...}} or
# {"unset": [...]}) and secrets (GET: names, who set them, when; PUT one: {"value": ...};
# DELETE one). docs/exec.md#environment-and-secrets.
PROJECT_ENV = f"{PROJECT}/env"
PROJECT_SECRETS = f"{PROJECT}/secrets"
PROJECT_SECRET = f"{PROJECT_SECRETS}/{{secret}}"

# Named volumes the project owns (GET: list, with its mounts; POST: create) and one (DELETE);
# the project's mounts of volumes (PUT MOUNT: set, DELETE: remove), docs/volumes.md.
PROJECT_VOLUMES = f"{PROJECT}/volumes"
PROJECT_VOLUME = f"{PROJECT_VOLUMES}/{{volume}}"
PROJECT_MOUNT = f"{PROJECT}/mounts/{{volume}}"

# Image drafts (GET: list, POST: create) and one draft (GET, PATCH: edit, DELETE); a text checked
# without storing it (POST IMAGE_DRAFT_CHECK), a stored draft checked (POST IMAGE_DRAFT_VALIDATE).
IMAGE_DRAFTS = f"{PROJECT}/image-drafts"
IMAGE_DRAFT_CHECK = f"{PROJECT}/image-draft-check"
IMAGE_DRAFT = f"{IMAGE_DRAFTS}/{{draft}}"
IMAGE_DRAFT_VALIDATE = f"{IMAGE_DRAFT}/validate"
# A project's built images (GET: list, POST: build a draft) and one build, by id or image name
# (GET: status, PATCH: rename, DELETE: record and files); its cancel and its job's output.
IMAGE_BUILDS = f"{PROJECT}/image-builds"
IMAGE_BUILD = f"{IMAGE_BUILDS}/{{build}}"
IMAGE_BUILD_CANCEL = f"{IMAGE_BUILD}/cancel"
IMAGE_BUILD_LOGS = f"{IMAGE_BUILD}/logs"
# A build context uploaded file by file (PUT: one chunk of one file; DELETE: the whole context),
# written into the workspace as the runtime user (protocol/build_context.py).
IMAGE_CONTEXT = f"{PROJECT}/image-contexts/{{context}}"
# One-shot commands (`rxctl run-once`): POST runs one as its own Slurm job; one by id (GET:
# state and exit code), its output (query: offset) and its cancel.
ONE_SHOTS = f"{PROJECT}/run-once"
ONE_SHOT = f"{ONE_SHOTS}/{{one_shot:[0-9]+}}"
ONE_SHOT_OUTPUT = f"{ONE_SHOT}/output"
ONE_SHOT_CANCEL = f"{ONE_SHOT}/cancel"
# The platform's door only: run one and stream its output and exit status in one answer.
ONE_SHOT_STREAM = f"{ONE_SHOTS}/stream"

# What a project's container can be asked to do, each a POST to CONTAINER_ACTION.
CONTAINER_ACTIONS = ("enable", "start", "stop", "disable", "retry")
CONTAINER_ACTION = f"{PROJECT}/{{action:{'|'.join(CONTAINER_ACTIONS)}}}"
CONTAINER_STATUS = f"{PROJECT}/status"
# The container's output (query: job, offset) and the project's timeline (query: limit).
PROJECT_LOGS = f"{PROJECT}/logs"
PROJECT_HISTORY = f"{PROJECT}/history"
# What a member's batch step runs in the project's environment (image, snapshot, workspace).
PROJECT_BATCH_PLAN = f"{PROJECT}/batch-plan"
# A read-only copy of the container's overlay for batch steps, now or when it next sleeps.
PROJECT_SNAPSHOT = f"{PROJECT}/snapshot"
# The persistent layer (and workspace, query workspace=1) as a gzip-compressed tar, streamed
# (GET); an archive of that kind streamed in to replace it (POST, application/gzip).
PROJECT_EXPORT = f"{PROJECT}/export"
PROJECT_IMPORT = f"{PROJECT}/import"
CONTAINERS = f"{V1}/containers"
# The project's image (PUT: set it, a manager's) and a pull of its reference (POST; refresh).
PROJECT_IMAGE = f"{PROJECT}/image"
PROJECT_IMAGE_PULL = f"{PROJECT_IMAGE}/pull"
# What runs in the container: sessions and detached commands (GET lists, POST starts one), one
# command's signal and its output (query: offset).
PROJECT_COMMANDS = f"{PROJECT}/commands"
PROJECT_COMMAND_SIGNAL = f"{PROJECT_COMMANDS}/{{command}}/signal"
PROJECT_COMMAND_OUTPUT = f"{PROJECT_COMMANDS}/{{command}}/output"
# A new, empty overlay for a sleeping container, the old one kept as a backup (POST; owners).
PROJECT_RESET = f"{PROJECT}/reset"
# A project's labels (POST: set and remove; keep=true and free-form key=value).
PROJECT_LABELS = f"{PROJECT}/labels"
# Garbage collection in the caller's own projects (POST; a dry run lists what would go).
GC = f"{V1}/gc"
# A command run for the research platform, its output streamed in frames (exec_frames); served
# on the platform's door only.
PROJECT_EXEC = f"{PROJECT}/exec"
# A file of the project's workspace (query: path, relative to /workspace); platform door only.
PROJECT_FILES = f"{PROJECT}/files"

# Slurm's controller hooks poke rxd here when a job starts or ends.
HOOK_JOB = f"{V1}/hooks/job"
# The exec protocol over the network door (a WebSocket; see exec_wire).
EXEC = f"{V1}/exec"

ADMIN_CODES = f"{V1}/admin/codes"
ADMIN_BIND = f"{V1}/admin/bind"
ADMIN_UNBIND = f"{V1}/admin/unbind"
ADMIN_BINDINGS = f"{V1}/admin/bindings"
ADMIN_AUDIT = f"{V1}/admin/audit"
ADMIN_QUOTAS = f"{V1}/admin/quotas"
ADMIN_QUOTA = f"{ADMIN_QUOTAS}/{{quota_id}}"
ADMIN_CONTAINERS = f"{V1}/admin/containers"
ADMIN_CONTAINER_STOP = f"{ADMIN_CONTAINERS}/{{name}}/stop"
# Garbage collection in the whole deployment (POST; a dry run lists what would go).
ADMIN_GC = f"{V1}/admin/gc"

# The research platform's routes, served only on its own door.
PLATFORM_PREFIX = f"{V1}/platform/"
PLATFORM_USERS = f"{PLATFORM_PREFIX}users"
PLATFORM_CODES = f"{PLATFORM_PREFIX}codes"


def path(pattern: str, *values: object) -> str:
    """`pattern` with its `{...}` fields filled, in order, each value quoted as one segment.

    path(PROJECT_MEMBER, "alpha", "rx bob") == "/v1/projects/alpha/members/rx%20bob"
    """
    # Imported here: rxctl's exec imports this module and fills no route (urllib.parse is a
    # few milliseconds of its start-up).
    from urllib.parse import quote

    out: list[str] = []
    rest = pattern
    left = list(values)
    while "{" in rest:
        head, _, field = rest.partition("{")
        _, _, rest = field.partition("}")
        if not left:
            raise TypeError(f"{pattern} needs more values than {len(values)}")
        out += [head, quote(str(left.pop(0)), safe="")]
    if left:
        raise TypeError(f"{pattern} takes {len(values) - len(left)} values, not {len(values)}")
    return "".join([*out, rest])
