"""A stand-in for Apptainer 1.3.4, for rx-slurm's tests only (see README.md beside this file).

It copies the CLI surface the project uses and really runs payloads: as the calling user, in a new
user + mount namespace whose root is built from the host's own directories (overlayfs per top-level
directory), with binds, overlays, instances and environment handled like Apptainer does.
Standard library only, and nothing heavy is imported before it is needed: it must start fast.
The executable `apptainer` beside this module only imports it, so its bytecode is cached.
"""

from __future__ import annotations

import json
import os
import signal
import sys

TYPE_CHECKING = False  # typing costs start-up time; only type checkers read this
if TYPE_CHECKING:
    from typing import NoReturn

VERSION = "1.3.4"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IMAGE_MAGIC = b"#!/usr/bin/env run-singularity\n# apptainer-standin image v1\n"
OVERLAY_MAGIC = b"# apptainer-standin overlay v1\n"
SESSION_SIZE = "64m"  # Apptainer's default "sessiondir max size"

# ---------------------------------------------------------------------------------------------
# Messages: Apptainer's sylog levels; a message prints when its level <= the current level.
# ---------------------------------------------------------------------------------------------
LEVELS = {"FATAL": -4, "ERROR": -3, "WARNING": -2, "INFO": 1, "VERBOSE": 2, "DEBUG": 5}
log_level = 1


def log(level: str, msg: str) -> None:
    if LEVELS[level] <= log_level:
        sys.stderr.write(f"{level + ':':<8} {msg}\n")
        sys.stderr.flush()


def info(msg: str) -> None:
    log("INFO", msg)


def warning(msg: str) -> None:
    log("WARNING", msg)


def debug(msg: str) -> None:
    log("DEBUG", msg)


class Fatal(Exception):
    """An Apptainer FATAL: printed on stderr, exit 255."""


class UsageError(Exception):
    """A cobra usage error: `Error for command "X": ...` plus usage, exit 1."""

    def __init__(self, cmd: str, msg: str, flag_error: bool = False) -> None:
        super().__init__(msg)
        self.cmd = cmd
        self.flag_error = flag_error


def die(exc: Fatal) -> NoReturn:
    log("FATAL", str(exc))
    os._exit(255)


# ---------------------------------------------------------------------------------------------
# Option parsing: pflag-like, interspersed=false (parsing stops at the first positional).
# ---------------------------------------------------------------------------------------------
class Opt:
    def __init__(self, name, short=None, kind="bool", env=(), split=True, dest=None, hidden=False):
        self.name = name
        self.short = short
        self.kind = kind  # bool | str | int | list
        self.env = env
        self.split = split  # list values: split on commas like pflag's StringSlice
        self.dest = dest or name.replace("-", "_")
        self.hidden = hidden


def O(*a, **k):  # noqa: E743 - short constructor for the tables below
    return Opt(*a, **k)


ACTION_OPTS = [
    O("bind", "B", "list", env=("BIND", "BINDPATH")),
    O("mount", None, "list", env=("MOUNT",), split=False),
    O("overlay", "o", "list", env=("OVERLAY", "OVERLAYIMAGE")),
    O("nv", None, "bool", env=("NV",)),
    O("nvccli", None, "bool", env=("NVCCLI",)),
    O("no-nv", None, "bool", env=("NO_NV",)),
    O("rocm", None, "bool", env=("ROCM",)),
    O("no-rocm", None, "bool", env=("NO_ROCM",)),
    O("contain", "c", "bool", env=("CONTAIN",)),
    O("containall", "C", "bool", env=("CONTAINALL",)),
    O("cleanenv", "e", "bool", env=("CLEANENV",)),
    O("env", None, "list", env=()),
    O("env-file", None, "str", env=("ENV_FILE",)),
    O("home", "H", "str", env=("HOME",)),
    O("no-home", None, "bool", env=("NO_HOME",)),
    O("writable-tmpfs", None, "bool", env=("WRITABLE_TMPFS",)),
    O("writable", "w", "bool", env=("WRITABLE",)),
    O("hostname", None, "str", env=("HOSTNAME",)),
    O("net", "n", "bool", env=("NET",)),
    O("network", None, "str", env=("NETWORK",)),
    O("network-args", None, "list", env=("NETWORK_ARGS",)),
    O("fakeroot", "f", "bool", env=("FAKEROOT",)),
    O("userns", "u", "bool", env=("USERNS", "UNSHARE")),
    O("workdir", "W", "str", env=("WORKDIR",)),
    O("app", None, "str", env=("APP", "APPNAME")),
    O("no-mount", None, "list", env=("NO_MOUNT",)),
    O("compat", None, "bool", env=("COMPAT",)),
    O("unsquash", None, "bool", env=("UNSQUASH",)),
    O("ipc", "i", "bool", env=("IPC",)),
    O("uts", None, "bool", env=("UTS",)),
    O("no-init", None, "bool", env=("NOINIT",)),
    O("no-umask", None, "bool", env=("NO_UMASK",)),
    O("no-eval", None, "bool", env=("NO_EVAL",)),
]
ACTION_ONLY_OPTS = [  # exec/run/shell/test, not instances
    O("pid", "p", "bool", env=("PID", "UNSHARE_PID")),
    O("cwd", None, "str", env=("TARGET_PWD",)),
    O("pwd", None, "str", env=("TARGET_PWD",), dest="cwd", hidden=True),
    O("sharens", None, "bool", env=("SHARENS",)),
]
SHELL_OPTS = [O("shell", "s", "str", env=("SHELL",))]
INSTANCE_START_OPTS = [O("pid-file", None, "str", env=("PID_FILE",))]
INSTANCE_LIST_OPTS = [
    O("user", "u", "str", env=("USER",)),
    O("json", "j", "bool", env=("JSON",)),
    O("logs", "l", "bool", env=("LOGS",)),
    O("all", "a", "bool"),
]
INSTANCE_STOP_OPTS = [
    O("all", "a", "bool", env=("ALL",)),
    O("force", "F", "bool", env=("FORCE",)),
    O("signal", "s", "str", env=("STOP_SIGNAL",)),
    O("timeout", "t", "int", env=("STOP_TIMEOUT",)),
    O("user", "u", "str", env=("USER",)),
]
BUILD_OPTS = [
    O("force", "F", "bool", env=("FORCE",)),
    O("sandbox", "s", "bool", env=("SANDBOX",)),
    O("notest", "T", "bool", env=("NOTEST",)),
    O("fakeroot", "f", "bool", env=("FAKEROOT",)),
    O("build-arg", None, "list", env=()),
    O("build-arg-file", None, "str", env=()),
    O("nv", None, "bool", env=("NV",)),
    O("nvccli", None, "bool", env=("NVCCLI",)),
    O("rocm", None, "bool", env=("ROCM",)),
    O("bind", "B", "list", env=("BIND",)),
    O("mount", None, "list", split=False),
    O("fix-perms", None, "bool", env=("FIXPERMS",)),
    O("disable-cache", None, "bool", env=("DISABLE_CACHE",)),
    O("section", None, "list", env=("SECTION",)),
    O("update", None, "bool", env=("UPDATE",)),
    O("writable-tmpfs", None, "bool", env=("WRITABLE_TMPFS",)),
    O("userns", "u", "bool", env=("USERNS",)),
    O("arch", None, "str"),
]
PULL_OPTS = [
    O("force", "F", "bool", env=("FORCE",)),
    O("dir", None, "str", env=("PULLDIR", "PULLFOLDER")),
    O("name", None, "str", env=("NAME",), hidden=True),
    O("disable-cache", None, "bool", env=("DISABLE_CACHE",)),
    O("arch", None, "str"),
    O("library", None, "str"),
    O("no-https", None, "bool"),
]
INSPECT_OPTS = [
    O("labels", "l", "bool"),
    O("deffile", "d", "bool"),
    O("runscript", "r", "bool"),
    O("startscript", "s", "bool"),
    O("test", "t", "bool"),
    O("environment", "e", "bool"),
    O("helpfile", "H", "bool"),
    O("json", "j", "bool"),
    O("all", None, "bool"),
    O("app", None, "str"),
    O("list", None, "bool"),
]
OVERLAY_CREATE_OPTS = [
    O("size", "s", "int"),
    O("sparse", "S", "bool"),
    O("fakeroot", "f", "bool"),
    O("create-dir", None, "list", split=False),
]
CACHE_LIST_OPTS = [O("type", "T", "list"), O("verbose", "v", "bool")]
CACHE_CLEAN_OPTS = [
    O("force", "f", "bool"),
    O("dry-run", "n", "bool"),
    O("type", "T", "list"),
    O("days", "d", "int"),
]
GLOBAL_OPTS = [
    O("debug", "d", "bool"),
    O("quiet", "q", "bool"),
    O("silent", "s", "bool"),
    O("verbose", "v", "bool"),
    O("nocolor", None, "bool"),
    O("config", "c", "str", env=("CONFIG_FILE",)),
    O("version", None, "bool"),
    O("help", "h", "bool"),
]

USAGE = {
    "apptainer": "apptainer [global options...] <command>",
    "exec": "apptainer [global options...] exec [exec options...] <container> <command>",
    "run": "apptainer [global options...] run [run options...] <container> [args...]",
    "shell": "apptainer [global options...] shell [shell options...] <container>",
    "test": "apptainer [global options...] test [exec options...] <image path>",
    "instance": "apptainer [global options...] instance",
    "start": "apptainer [global options...] instance start [start options...] "
    "<container path> <instance name> [startscript args...]",
    "stop": "apptainer [global options...] instance stop [stop options...] [instance]",
    "list": "apptainer [global options...] instance list [list options...] [<instance name glob>]",
    "build": "apptainer [global options...] build [local options...] <IMAGE PATH> <BUILD SPEC>",
    "pull": "apptainer [global options...] pull [pull options...] [output file] <URI>",
    "inspect": "apptainer [global options...] inspect [inspect options...] <image path>",
    "overlay": "apptainer [global options...] overlay",
    "create": "apptainer [global options...] overlay create <options> image",
    "cache": "apptainer [global options...] cache",
    "clean": "apptainer [global options...] cache clean [clean options...]",
    "version": "apptainer [global options...] version",
}


def usage_text(cmd: str) -> str:
    return f"Usage:\n  {USAGE.get(cmd, USAGE['apptainer'])}\n\n"


def flag_usages(opts) -> str:
    lines = []
    for o in opts:
        if o.hidden:
            continue
        short = f"-{o.short}, " if o.short else "    "
        arg = "" if o.kind == "bool" else f" {o.kind if o.kind != 'list' else 'strings'}"
        lines.append(f"  {short}--{o.name}{arg}")
    return "\n".join(lines) + "\n"


def print_usage_error(err: UsageError, opts) -> None:
    out = f'Error for command "{err.cmd}": {err}\n\n'
    if err.flag_error:
        out += f"Options for {err.cmd} command:\n\n{flag_usages(opts)}\n"
    else:
        out += usage_text(err.cmd)
    out += "Run 'apptainer --help' for more detailed usage information.\n"
    sys.stderr.write(out)


def parse_bool(text: str) -> bool | None:
    t = text.strip().lower()
    if t in ("1", "t", "true", "yes", "y"):
        return True
    if t in ("0", "f", "false", "no", "n", ""):
        return False
    return None


def parse_opts(cmd: str, opts, argv):
    """Parse argv with pflag's rules; returns (values, positionals). Env applies afterwards."""
    by_long = {o.name: o for o in opts}
    by_short = {o.short: o for o in opts if o.short}
    vals = {}
    given = set()

    def store(o, value):
        given.add(o.dest)
        if o.kind == "bool":
            b = True if value is None else parse_bool(value)
            if b is None:
                raise UsageError(cmd, f'invalid argument "{value}" for "--{o.name}" flag', True)
            vals[o.dest] = b
        elif o.kind == "int":
            try:
                vals[o.dest] = int(value)
            except ValueError:
                raise UsageError(
                    cmd, f'invalid argument "{value}" for "--{o.name}" flag', True
                ) from None
        elif o.kind == "list":
            items = value.split(",") if o.split else [value]
            vals.setdefault(o.dest, []).extend(i for i in items if i != "" or not o.split)
        else:
            vals[o.dest] = value

    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            i += 1
            break
        if a.startswith("--"):
            name, eq, value = a[2:].partition("=")
            o = by_long.get(name)
            if o is None:
                raise UsageError(cmd, f"unknown flag: --{name}", True)
            if o.kind == "bool":
                store(o, value if eq else None)
            elif eq:
                store(o, value)
            else:
                if i + 1 >= len(argv):
                    raise UsageError(cmd, f"flag needs an argument: --{name}", True)
                i += 1
                store(o, argv[i])
            i += 1
            continue
        if a.startswith("-") and a != "-":
            j = 1
            while j < len(a):
                c = a[j]
                o = by_short.get(c)
                if o is None:
                    raise UsageError(cmd, f"unknown shorthand flag: '{c}' in {a}", True)
                if o.kind == "bool":
                    if j + 1 < len(a) and a[j + 1] == "=":
                        store(o, a[j + 2 :])
                        break
                    store(o, None)
                    j += 1
                    continue
                rest = a[j + 1 :]
                if rest.startswith("="):
                    rest = rest[1:]
                if rest:
                    store(o, rest)
                else:
                    if i + 1 >= len(argv):
                        raise UsageError(cmd, f"flag needs an argument: '{c}' in -{c}", True)
                    i += 1
                    store(o, argv[i])
                break
            i += 1
            continue
        break
    positionals = argv[i:]
    # APPTAINER_<KEY> beats SINGULARITY_<KEY>; a flag given on the command line beats both,
    # except binds, which Apptainer appends.
    for o in opts:
        for key in o.env:
            value = os.environ.get("APPTAINER_" + key)
            if value is None:
                value = os.environ.get("SINGULARITY_" + key)
            if value is None:
                continue
            if o.dest in given and o.dest != "bind":
                break
            if o.kind == "bool":
                b = parse_bool(value)
                if b is not None:
                    vals[o.dest] = b
            elif o.kind == "int":
                try:  # noqa: SIM105 - contextlib costs start-up time
                    vals[o.dest] = int(value)
                except ValueError:
                    pass
            elif o.kind == "list":
                items = value.split(",") if o.split else [value]
                vals.setdefault(o.dest, []).extend(x for x in items if x)
            else:
                vals[o.dest] = value
            break
    for o in opts:
        vals.setdefault(o.dest, [] if o.kind == "list" else (False if o.kind == "bool" else None))
    return vals, positionals


def need_args(cmd, args, lo, hi=None):
    n = len(args)
    if hi is None and n < lo:
        raise UsageError(cmd, f"requires at least {lo} arg(s), only received {n}")
    if hi is not None and lo == hi and n != lo:
        raise UsageError(cmd, f"accepts {lo} arg(s), received {n}")
    if hi is not None and not lo <= n <= hi:
        raise UsageError(cmd, f"accepts between {lo} and {hi} arg(s), received {n}")


# ---------------------------------------------------------------------------------------------
# Identity and paths
# ---------------------------------------------------------------------------------------------
def me():
    import pwd

    return pwd.getpwuid(os.getuid())


def user_by_name(name: str):
    import pwd

    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise Fatal(f"Could not list instances: could not find user {name}") from None


def config_dir(pw=None) -> str:
    """$APPTAINER_CONFIGDIR for the caller, else ~/.apptainer of the passwd entry."""
    if pw is None:
        pw = me()
        env = os.environ.get("APPTAINER_CONFIGDIR") or os.environ.get("SINGULARITY_CONFIGDIR")
        if env:
            return env
    return os.path.join(pw.pw_dir, ".apptainer")


def hostname() -> str:
    return os.uname().nodename


def abspath(p: str) -> str:
    return os.path.normpath(os.path.join(os.getcwd(), p))


# ---------------------------------------------------------------------------------------------
# Images: a stand-in SIF is IMAGE_MAGIC followed by one JSON object (see README.md).
# A directory is a sandbox; its metadata lives in .singularity.d like a real sandbox's.
# ---------------------------------------------------------------------------------------------
def uri_scheme(spec: str) -> str | None:
    """The transport of an image reference (docker, library, ...), None for a path."""
    if "://" in spec:
        return spec.split("://", 1)[0]
    for s in ("docker-daemon", "docker-archive", "oci-archive", "oci"):
        if spec.startswith(s + ":"):
            return s
    return None


def empty_meta() -> dict:
    return {
        "labels": {},
        "environment": "",
        "runscript": "",
        "startscript": "",
        "test": "",
        "help": "",
        "deffile": "",
        "source": "",
    }


def read_image_file(path: str) -> dict | None:
    """The metadata of a stand-in image file, or None when the file is not one."""
    with open(path, "rb") as f:
        head = f.read(len(IMAGE_MAGIC))
        if head != IMAGE_MAGIC:
            return None
        data = f.read()
    meta = empty_meta()
    meta.update(json.loads(data))
    return meta


def read_sandbox(path: str) -> dict:
    meta = empty_meta()
    d = os.path.join(path, ".singularity.d")

    def rd(name):
        try:
            with open(os.path.join(d, name)) as f:
                return f.read()
        except OSError:
            return ""

    try:  # noqa: SIM105 - contextlib costs start-up time
        meta["labels"] = json.loads(rd("labels.json") or "{}")
    except ValueError:
        pass
    meta["environment"] = rd("env/90-environment.sh")
    meta["runscript"] = rd("runscript")
    meta["startscript"] = rd("startscript")
    meta["test"] = rd("test")
    meta["help"] = rd("runscript.help")
    meta["deffile"] = rd("Singularity")
    return meta


def open_image(spec: str) -> tuple[str, dict]:
    """Resolve an image argument to (path-or-uri, metadata); FATAL like Apptainer on errors."""
    if uri_scheme(spec):
        meta = empty_meta()
        meta["source"] = spec
        return spec, meta
    ap = abspath(spec)
    try:
        resolved = os.path.realpath(ap, strict=True)
    except OSError:
        raise Fatal(
            f"could not open image {ap}: failed to retrieve path for {spec}: "
            f"lstat {ap}: no such file or directory"
        ) from None
    if not os.access(resolved, os.R_OK):
        raise Fatal(
            f"could not open image {resolved}: {resolved} is not readable by the current user, "
            "check permissions"
        )
    if os.path.isdir(resolved):
        return resolved, read_sandbox(resolved)
    meta = read_image_file(resolved)
    if meta is None:
        raise Fatal(f"could not open image {resolved}: image format not recognized")
    return resolved, meta


def write_image(path: str, meta: dict) -> None:
    tmp = f"{path}.standin-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(IMAGE_MAGIC)
        f.write(json.dumps(meta, indent=1, sort_keys=True).encode())
        f.write(b"\n")
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)


def write_sandbox(path: str, meta: dict) -> None:
    d = os.path.join(path, ".singularity.d")
    os.makedirs(os.path.join(d, "env"), exist_ok=True)
    files = {
        "labels.json": json.dumps(meta["labels"], indent="\t"),
        "env/90-environment.sh": meta["environment"],
        "runscript": meta["runscript"],
        "startscript": meta["startscript"],
        "test": meta["test"],
        "runscript.help": meta["help"],
        "Singularity": meta["deffile"],
    }
    for name, content in files.items():
        p = os.path.join(d, name)
        if content:
            with open(p, "w") as f:
                f.write(content)
            os.chmod(p, 0o755 if name in ("runscript", "startscript", "test") else 0o644)
        elif os.path.exists(p):
            os.unlink(p)


def standard_labels(bootstrap: str = "", frm: str = "") -> dict:
    import time

    labels = {
        "org.label-schema.build-arch": "amd64" if os.uname().machine == "x86_64" else "arm64",
        "org.label-schema.build-date": time.strftime("%A_%-d_%B_%Y_%-H:%-M:%-S_%Z"),
        "org.label-schema.schema-version": "1.0",
        "org.label-schema.usage.apptainer.version": VERSION,
    }
    if bootstrap:
        labels["org.label-schema.usage.singularity.deffile.bootstrap"] = bootstrap
    if frm:
        labels["org.label-schema.usage.singularity.deffile.from"] = frm
    return labels


# ---------------------------------------------------------------------------------------------
# Overlays. /dev/fuse is root-only here and an ext3 image cannot be mounted unprivileged, so an
# "overlay image" is a marker file (OVERLAY_MAGIC + JSON, sparse up to its size) naming a data
# directory beside it: .<name>.standin-overlay-<id>/ holding the upper and work directories.
# Removing the marker makes the data unreachable (a new image gets a new id) and the next
# `overlay create` of that name sweeps the orphaned directory.
# ---------------------------------------------------------------------------------------------
def overlay_data_prefix(img: str) -> str:
    return f".{os.path.basename(img)}.standin-overlay-"


def read_overlay(img: str) -> dict | None:
    try:
        with open(img, "rb") as f:
            if f.read(len(OVERLAY_MAGIC)) != OVERLAY_MAGIC:
                return None
            line = f.readline()
    except IsADirectoryError:
        return {"data": img, "dir": True}
    info_ = json.loads(line)
    info_["data"] = os.path.join(os.path.dirname(img), info_["data"])
    return info_


def top_level_mode(name: str, mountpoints: set, contain: bool = False) -> str:
    """How the container gets host directory /name (see build_root)."""
    path = "/" + name
    if name == "proc":
        return "proc"
    if name in ("sys",):
        return "rbind"
    if name == "dev":
        return "minidev" if contain else "rbind"
    if name == "tmp":
        return "tmp"
    if name == "home":
        return "home"
    if name == "run":
        return "empty"
    if any(m == path or m.startswith(path + "/") for m in mountpoints):
        return "rbind"  # submounts from the host are locked in a user namespace: no overlay
    return "overlay"


def host_mountpoints() -> set:
    points = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4]
            if "\\" in mp:
                mp = mp.encode().decode("unicode_escape")
            points.add(mp)
    return points


def overlay_upper_path(data: str, dest: str, mountpoints: set) -> str:
    """Where a container path lives in an overlay's data directory."""
    dest = resolve_host_prefix(dest)
    parts = dest.strip("/").split("/", 1)
    top = parts[0]
    rest = parts[1] if len(parts) > 1 else ""
    is_dir = os.path.isdir("/" + top) and not os.path.islink("/" + top)
    if is_dir and top_level_mode(top, mountpoints) == "overlay":
        return os.path.join(data, "dirs", top, rest)
    return os.path.join(data, "rootfs", dest.strip("/"))


def resolve_host_prefix(path: str) -> str:
    """Resolve symlinks in the longest existing prefix of path, as the container would."""
    path = os.path.normpath(path)
    head, tail = path, ""
    while head != "/" and not os.path.lexists(head):
        head, base = os.path.split(head)
        tail = os.path.join(base, tail) if tail else base
    real = os.path.realpath(head)
    return os.path.normpath(os.path.join(real, tail)) if tail else real


def cmd_overlay_create(vals, args):
    need_args("create", args, 1, 1)
    import secrets

    size = vals["size"] if vals["size"] is not None else 64
    if size < 64:
        raise Fatal("image size must be equal or greater than 64 MiB")
    img = abspath(args[0])
    dirs = vals["create_dir"]
    for d in dirs:
        if not d.startswith("/"):
            raise Fatal(f"{d} must be an absolute path")
    if os.path.lexists(img) and os.access(img, os.W_OK):
        if read_overlay(img) is not None:
            raise Fatal(f"EXT3 overlay image {img} already exists")
        if read_image_file(img) is not None:
            raise Fatal(
                f"while adding ext3 overlay partition to {img}: the stand-in cannot "
                "embed overlays in images"
            )
        raise Fatal("destination image must be SIF image")
    parent = os.path.dirname(img)
    prefix = overlay_data_prefix(img)
    try:
        for entry in os.listdir(parent):
            if entry.startswith(prefix):  # data of a removed image of the same name
                remove_tree(os.path.join(parent, entry))
    except OSError as e:
        raise Fatal(f"while zero'ing overlay image {img}.ext3: {e.strerror}") from None
    token = secrets.token_hex(8)
    data = os.path.join(parent, prefix + token)
    try:
        for sub in ("rootfs", "dirs", "work"):
            makedirs_mode(os.path.join(data, sub))
        mountpoints = host_mountpoints()
        for d in dirs:
            makedirs_mode(overlay_upper_path(data, d, mountpoints))
        tmp = img + ".ext3"
        with open(tmp, "wb") as f:
            f.write(OVERLAY_MAGIC)
            rec = {"data": os.path.basename(data), "size_mb": size, "sparse": vals["sparse"]}
            f.write(json.dumps(rec).encode() + b"\n")
            f.truncate(size * 1024 * 1024)
        os.chmod(tmp, 0o600)
        os.rename(tmp, img)
    except OSError as e:
        remove_tree(data)
        raise Fatal(f"while creating {e.filename}: {e.strerror}") from None
    return 0


def makedirs_mode(path: str, mode: int = 0o755) -> None:
    """os.makedirs giving every created level `mode` (makedirs only gives it to the leaf)."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for p in reversed(missing):
        os.mkdir(p)
        os.chmod(p, mode)


def remove_tree(path: str) -> None:
    """rm -rf that also handles overlayfs work dirs (left with mode 000)."""
    import shutil

    def fix(func, p, exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
        except OSError:
            pass
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, onerror=None)
            else:
                os.unlink(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix)


# ---------------------------------------------------------------------------------------------
# Kernel interfaces (ctypes, loaded only when a container is made).
# ---------------------------------------------------------------------------------------------
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2
PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
_libc = None


def libc():
    global _libc
    if _libc is None:
        import ctypes

        lib = ctypes.CDLL(None, use_errno=True)
        lib.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
        ]
        lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        lib.prctl.argtypes = [
            ctypes.c_int,
            ctypes.c_ulong,
            ctypes.c_ulong,
            ctypes.c_ulong,
            ctypes.c_ulong,
        ]
        _libc = lib
    return _libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(s):
    return None if s is None else os.fsencode(s)


def sys_mount(src, target, fstype, flags, data=None) -> None:
    _check(
        libc().mount(_b(src), _b(target), _b(fstype), flags, _b(data)),
        f"mount {src or fstype} on {target}",
    )


def sys_umount(target, flags=0) -> None:
    _check(libc().umount2(_b(target), flags), f"umount {target}")


def sys_unshare(flags: int) -> None:
    _check(libc().unshare(flags), "unshare")


def sys_setns(fd: int, nstype: int) -> None:
    _check(libc().setns(fd, nstype), "setns")


def sys_pivot_root(new: str, old: str) -> None:
    nr = SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise OSError(0, "pivot_root: unsupported architecture")
    _check(libc().syscall(nr, _b(new), _b(old)), "pivot_root")


def sys_sethostname(name: str) -> None:
    raw = name.encode()
    _check(libc().sethostname(raw, len(raw)), "sethostname")


def prctl(option: int, arg: int = 0) -> None:
    libc().prctl(option, arg, 0, 0, 0)


def set_title(title: str) -> None:
    """Rewrite our argv area so ps shows `title` (what setproctitle does)."""
    import ctypes

    with open("/proc/self/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
    size = end - start
    raw = title.encode()[: size - 1]
    ctypes.memmove(start, raw + b"\0" * (size - len(raw)), size)
    name = ctypes.create_string_buffer(title.encode()[:15])
    libc().prctl(PR_SET_NAME, ctypes.addressof(name), 0, 0, 0)


def write_id_maps(fakeroot: bool, uid: int, gid: int) -> None:
    """Same uid/gid inside as outside (or root-mapped for --fakeroot): the kernel lets any
    user map their own ids into a namespace they own, after giving up setgroups()."""
    inside_uid, inside_gid = (0, 0) if fakeroot else (uid, gid)
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{inside_uid} {uid} 1\n")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{inside_gid} {gid} 1\n")


def remount_ro(target: str) -> None:
    """Read-only remount keeping the flags a user namespace may not drop (locked flags)."""
    st = os.statvfs(target)
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY
    for st_bit, ms_bit in (
        (os.ST_NOSUID, MS_NOSUID),
        (os.ST_NODEV, MS_NODEV),
        (os.ST_NOEXEC, MS_NOEXEC),
        (os.ST_NOATIME, MS_NOATIME),
        (os.ST_NODIRATIME, MS_NODIRATIME),
        (os.ST_RELATIME, MS_RELATIME),
    ):
        if st.f_flag & st_bit:
            flags |= ms_bit
    sys_mount(None, target, None, flags)


def ovl_escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


FORWARDED_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
)
WAIT_SIGNALS = set(FORWARDED_SIGNALS) | {signal.SIGCHLD}


def block_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, WAIT_SIGNALS)


def reset_signals_for_exec() -> None:
    # Python ignores SIGPIPE and SIGXFSZ; an ignored signal survives exec, so give them back.
    for s in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(s, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def wait_forwarding(child: int) -> int:
    """Wait for child, forwarding signals that were sent to us (kill(2)); signals the terminal
    generated reached the child's process group already, so those are not sent twice."""
    while True:
        si = signal.sigwaitinfo(WAIT_SIGNALS)
        if si.si_signo == signal.SIGCHLD:
            pid, status = os.waitpid(child, os.WNOHANG)
            if pid == child:
                return exit_code(status)
            continue
        if si.si_code <= 0:  # SI_USER, SI_QUEUE, SI_TKILL: sent by a process
            try:  # noqa: SIM105 - contextlib costs start-up time
                os.kill(child, si.si_signo)
            except ProcessLookupError:
                pass


# ---------------------------------------------------------------------------------------------
# The container plan: everything decided on the host side, before any namespace exists.
# ---------------------------------------------------------------------------------------------
ALWAYS_PASS = {
    "TERM",
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "no_proxy",
    "NO_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "ftp_proxy",
    "FTP_PROXY",
}
ALWAYS_OMIT = {"HOME", "PATH", "APPTAINER_SHELL", "APPTAINER_APPNAME", "LD_LIBRARY_PATH"}
NAME_RE = "^[a-zA-Z0-9._-]+$"


def parse_env_file(path: str) -> dict:
    import shlex

    out = {}
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise Fatal(f"while processing {path}: {e.strerror}") from None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:].strip()
        key, eq, value = line.partition("=")
        if not eq:
            continue
        try:  # noqa: SIM105 - contextlib costs start-up time
            value = " ".join(shlex.split(value))
        except ValueError:
            pass
        out[key.strip()] = value
    return out


def host_environment(vals: dict, home_dest: str) -> dict:
    """What the host contributes to the container's environment (see Apptainer's env/clean.go
    and its action script): forwarded variables, user-defined ones, PATH edits."""
    cleanenv = vals["cleanenv"]
    exported: dict[str, str] = {}
    user: dict[str, str] = {}
    path_edits: dict[str, str] = {}
    if cleanenv:
        exported["LANG"] = "C"
    if vals.get("env_file"):
        user.update(parse_env_file(vals["env_file"]))
    apptainer_env = {}
    for key, value in os.environ.items():
        for prefix in ("SINGULARITYENV_", "APPTAINERENV_"):  # APPTAINERENV_ wins: last
            if key.startswith(prefix):
                apptainer_env.setdefault(prefix, {})[key[len(prefix) :]] = value
    merged = {**apptainer_env.get("SINGULARITYENV_", {}), **apptainer_env.get("APPTAINERENV_", {})}
    for item in vals.get("env") or []:
        key, eq, value = item.partition("=")
        if eq:
            merged[key] = value
    for key, value in merged.items():
        if key in ("PREPEND_PATH", "APPEND_PATH", "PATH"):
            path_edits[key] = value
        elif not key:
            continue
        elif key in ALWAYS_OMIT and key != "LD_LIBRARY_PATH":
            warning(
                f"Overriding {key} environment variable with APPTAINERENV_{key} is not permitted"
            )
        else:
            user[key] = value
    for key, value in os.environ.items():
        if key.startswith(("APPTAINER", "SINGULARITY")) or key in user:
            continue
        if key in ALWAYS_PASS or (key not in ALWAYS_OMIT and not cleanenv):
            exported[key] = value
    exported["HOME"] = home_dest
    exported["PATH"] = DEFAULT_PATH
    return {"exported": exported, "user": user, "path": path_edits}


def parse_bind(spec: str) -> dict:
    parts = spec.split(":")
    src = parts[0]
    dest = src
    opts = ""
    if len(parts) == 2 and parts[1] in ("ro", "rw"):
        opts = parts[1]
    elif len(parts) >= 2:
        dest = parts[1] or src
        opts = ",".join(parts[2:])
    return {"src": src, "dest": dest, "ro": "ro" in opts.split(","), "kind": "bind"}


def parse_mount(spec: str) -> dict:
    fields = {}
    for item in spec.split(","):
        key, eq, value = item.partition("=")
        fields[key.strip()] = value if eq else "true"
    if fields.get("type", "bind") != "bind":
        raise Fatal(f"while parsing mount {spec!r}: the stand-in supports only type=bind")
    src = fields.get("source") or fields.get("src")
    dest = fields.get("destination") or fields.get("dst") or fields.get("target")
    if not src or not dest:
        raise Fatal(f"while parsing mount {spec!r}: mount source and destination are required")
    ro = parse_bool(fields.get("ro", fields.get("readonly", "false"))) or False
    return {"src": src, "dest": dest, "ro": ro, "kind": "bind"}


def check_bind_source(b: dict) -> None:
    src = abspath(b["src"])
    if not os.path.exists(src):
        raise Fatal(
            f"container creation failed: mount hook function failure: mount {src}->{b['dest']} "
            f"error: while mounting {src}: mount source {src} doesn't exist"
        )
    if not b["dest"].startswith("/"):
        raise Fatal(f"container creation failed: destination {b['dest']} must be an absolute path")
    b["src"] = os.path.realpath(src)
    b["dest"] = os.path.normpath(b["dest"])
    b["isdir"] = os.path.isdir(b["src"])


def open_overlays(specs: list) -> tuple[list, list]:
    """The overlays to use and their lock fds (flock: one writer, or shared readers)."""
    import fcntl

    overlays, fds = [], []
    writable_seen = False
    for spec in specs:
        path, ro = spec, False
        if spec.endswith(":ro") or spec.endswith(":rw"):
            path, ro = spec[:-3], spec.endswith(":ro")
        ap = abspath(path)
        if not os.path.lexists(ap):
            raise Fatal(
                f"while loading overlay images: failed to open overlay image {path}: "
                f"failed to retrieve path for {path}: lstat {ap}: no such file or "
                "directory"
            )
        ovl = read_overlay(ap)
        if ovl is None:
            raise Fatal(
                f"while loading overlay images: failed to open overlay image {path}: "
                "image format not recognized"
            )
        data = ovl["data"]
        if not os.path.isdir(data):
            raise Fatal(f"while loading overlay images: overlay data of {ap} is missing ({data})")
        if not ro and not (os.access(ap, os.W_OK) and os.access(data, os.W_OK)):
            ro = True  # Apptainer opens an image it may not write read-only
        if not ro:
            if writable_seen:
                raise Fatal(
                    "while loading overlay images: you can't specify more than one "
                    "writable overlay image"
                )
            writable_seen = True
        fd = os.open(ap, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if ro else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            what = "reading, currently in use for writing" if ro else "writing, currently in use"
            raise Fatal(
                f"while loading overlay images: failed to open overlay image {ap}: "
                f"can't open {ap} for {what} by another process"
            ) from None
        fds.append(fd)
        overlays.append({"data": data, "writable": not ro})
    return overlays, fds


def make_plan(command: str, vals: dict, image_spec: str, args: list, instance: str = "") -> dict:
    pw = me()
    uid, gid = os.getuid(), os.getgid()
    image, meta = open_image(image_spec)
    if vals["containall"] or vals["compat"]:
        vals["contain"] = vals["cleanenv"] = vals["ipc"] = True
        if command not in ("start", "instance-run"):
            vals["pid"] = True
    if vals["compat"]:
        vals["writable_tmpfs"] = True
    if vals["writable"]:
        raise Fatal(f"no SIF writable overlay partition found in {image}")
    no_mount = set(vals["no_mount"])
    fakeroot = vals["fakeroot"]
    if fakeroot and uid != 0:
        info("User not listed in /etc/subuid, trying root-mapped namespace")
    # home
    home_src = home_dest = pw.pw_dir
    custom_home = bool(vals["home"])
    if custom_home:
        src, _, dest = vals["home"].partition(":")
        home_src, home_dest = abspath(src), os.path.normpath(dest or abspath(src))
    elif fakeroot:
        home_dest = "/root"
    if vals["no_home"] or "home" in no_mount:
        home = {"kind": "none", "dest": home_dest}
    elif vals["contain"] and not custom_home:
        home = {"kind": "tmpfs", "dest": home_dest, "src": None}
    elif not custom_home and not os.path.isdir(home_src):
        warning(f"skipping mount of {home_src}: stat {home_src}: no such file or directory")
        home = {"kind": "none", "dest": home_dest}
    else:
        home = {"kind": "bind", "src": home_src, "dest": home_dest, "ro": False}
        check_bind_source(home)
    binds = []
    if "bind-paths" not in no_mount:
        binds = [parse_bind(s) for s in vals["bind"] if s]
    binds += [parse_mount(s) for s in vals["mount"]]
    for b in binds:
        check_bind_source(b)
    overlays, lock_fds = open_overlays(vals["overlay"])
    nv_devices = []
    if vals["nv"] or vals["nvccli"]:
        import glob

        nv_devices = sorted(glob.glob("/dev/nvidia*"))
        if not nv_devices:
            warning("Could not find any nv files on this host!")
        if vals["nvccli"]:
            vals["writable_tmpfs"] = True
    if vals["rocm"] and not os.path.exists("/dev/kfd"):
        warning("Could not find any rocm files on this host!")
    net = vals["net"] or vals["network"] is not None
    if net and uid != 0 and (vals["network"] or "bridge") != "none":
        raise Fatal("non-root users can only use --network=none")
    workdir = None
    if vals["workdir"]:
        workdir = abspath(vals["workdir"])
        for sub in ("tmp", "var_tmp"):
            os.makedirs(os.path.join(workdir, sub), exist_ok=True)
    try:
        host_cwd = os.getcwd()
    except OSError:
        host_cwd = "/"
    env = host_environment(vals, home_dest)
    name = os.path.basename(image)
    runtime = {
        "APPTAINER_COMMAND": {"instance-run": "run"}.get(command, command),
        "APPTAINER_CONTAINER": image,
        "APPTAINER_NAME": name,
        "SINGULARITY_CONTAINER": image,
        "SINGULARITY_NAME": name,
    }
    if instance:
        runtime["APPTAINER_INSTANCE"] = instance
    if binds:
        runtime["APPTAINER_BIND"] = runtime["SINGULARITY_BIND"] = ",".join(
            f"{b['src']}:{b['dest']}" + (":ro" if b["ro"] else "") for b in binds
        )
    if vals["nvccli"] and not vals["contain"]:
        runtime["NVIDIA_VISIBLE_DEVICES"] = "all"
    env["exported"].update(runtime)
    return {
        "command": command,
        "image": image,
        "meta": meta,
        "args": args,
        "uid": uid,
        "gid": gid,
        "fakeroot": fakeroot,
        "contain": vals["contain"],
        "pid": bool(vals.get("pid")),
        "ipc": vals["ipc"],
        "net": net,
        "hostname": vals["hostname"],
        "home": home,
        "binds": binds,
        "overlays": overlays,
        "lock_fds": lock_fds,
        "writable_tmpfs": vals["writable_tmpfs"],
        "workdir": workdir,
        "no_mount": no_mount,
        "host_cwd": host_cwd,
        "target_cwd": vals.get("cwd"),
        "env": env,
        "nv_devices": nv_devices,
        "shell": vals.get("shell"),
        "instance": instance,
    }


def unshare_flags(plan: dict) -> int:
    flags = CLONE_NEWUSER
    if plan["pid"]:
        flags |= CLONE_NEWPID
    if plan["hostname"]:
        flags |= CLONE_NEWUTS
    if plan["ipc"]:
        flags |= CLONE_NEWIPC
    if plan["net"]:
        flags |= CLONE_NEWNET
    return flags


# ---------------------------------------------------------------------------------------------
# Building the container's root, inside new user + mount namespaces (see README.md):
#   a tmpfs "session" holds skeletons; "/" is an overlay of the root skeleton (mount points,
#   host symlinks, /.singularity.d); every host top-level directory without submounts is an
#   overlay of its own (lower: a skeleton with extra mount points over the host directory;
#   upper: the --overlay image's data, a --writable-tmpfs layer, or none = read-only);
#   /proc /sys /dev and directories with host submounts are bind mounts; /home is an empty
#   tmpfs that receives only $HOME; then binds; then pivot_root.
# ---------------------------------------------------------------------------------------------
def _touch(path: str, isdir: bool) -> None:
    if isdir:
        os.makedirs(path, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.lexists(path):
            open(path, "w").close()


def plan_mounts(plan: dict, modes: dict) -> list:
    """Mount operations after the base layout, in order: home, /var/tmp, binds, cwd."""
    ops = []
    home = plan["home"]
    if home["kind"] == "bind":
        ops.append(dict(home, isdir=True))
    elif home["kind"] == "tmpfs":
        ops.append({"kind": "tmpfs", "dest": home["dest"], "isdir": True})
    if modes.get("var") == "overlay" and "tmp" not in plan["no_mount"]:
        if plan["workdir"]:
            ops.append(
                {
                    "kind": "bind",
                    "src": os.path.join(plan["workdir"], "var_tmp"),
                    "dest": "/var/tmp",
                    "ro": False,
                    "isdir": True,
                }
            )
        elif plan["contain"]:
            ops.append({"kind": "tmpfs", "dest": "/var/tmp", "isdir": True, "mode": "1777"})
        elif os.path.isdir("/var/tmp"):
            ops.append(
                {"kind": "bind", "src": "/var/tmp", "dest": "/var/tmp", "ro": False, "isdir": True}
            )
    ops += [dict(b) for b in plan["binds"]]
    cwd = plan["host_cwd"]
    wants_cwd = not plan["contain"] and "cwd" not in plan["no_mount"] and not plan["target_cwd"]
    if wants_cwd and not cwd_visible(cwd, modes, ops, plan):
        ops.append({"kind": "bind", "src": cwd, "dest": cwd, "ro": False, "isdir": True})
    return ops


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def cwd_visible(cwd: str, modes: dict, ops: list, plan: dict) -> bool:
    if any(_under(cwd, op["dest"]) for op in ops):
        return True
    top = cwd.strip("/").split("/", 1)[0]
    mode = modes.get(top)
    if not top or mode in ("overlay", "rbind", "proc"):
        return True
    return mode == "tmp" and not plan["contain"] and "tmp" not in plan["no_mount"]


def place_mountpoints(ops: list, modes: dict, stage: str, contain_tmp: bool) -> None:
    """Give every operation a target inside the new root, creating mount points in the
    skeletons (lower layers, so before the overlays are mounted) where the host has none.
    contain_tmp: /tmp is a fresh tmpfs or the workdir rather than the host's /tmp."""
    done = []
    for op in ops:
        dest = op["dest"]
        cover = next((d for d in reversed(done) if _under(dest, d["dest"])), None)
        if cover is not None:
            rest = os.path.relpath(dest, cover["dest"])
            if cover["kind"] == "bind":
                inner = os.path.normpath(os.path.join(cover["src"], rest))
                if not os.path.exists(inner):
                    op["skip"] = True
                    continue
            else:
                op["mkdir_at_mount"] = True
            op["target"] = dest
            done.append(op)
            continue
        rdest = resolve_host_prefix(dest)
        parts = rdest.strip("/").split("/", 1)
        top, rest = parts[0], (parts[1] if len(parts) > 1 else "")
        mode = modes.get(top)
        exists = os.path.exists(rdest)
        if mode == "overlay":
            if not exists:
                _touch(os.path.join(stage, "skels", top, rest), op["isdir"])
        elif mode is None or mode == "empty":
            if os.path.lexists("/" + top) and mode is None and not os.path.isdir("/" + top):
                op["skip"] = True
                continue
            _touch(os.path.join(stage, "skel", rdest.strip("/")), op["isdir"])
        elif mode == "home" or (mode == "tmp" and contain_tmp):
            op["mkdir_at_mount"] = True
        elif not exists:
            op["skip"] = True
            continue
        op["target"] = rdest
        done.append(op)
    for op in ops:
        if op.get("skip"):
            warning(
                f"skipping mount of {op.get('src') or 'tmpfs'}: destination {op['dest']} "
                "doesn't exist in container"
            )


def write_metadata(skel: str, meta: dict) -> None:
    d = os.path.join(skel, ".singularity.d")
    os.makedirs(os.path.join(d, "env"))
    os.makedirs(os.path.join(d, "libs"))
    files = {
        "env/90-environment.sh": meta.get("environment")
        or "#!/bin/sh\n# Custom environment shell code should follow\n\n",
        "labels.json": json.dumps(meta.get("labels") or {}, indent="\t"),
        "runscript": meta.get("runscript"),
        "startscript": meta.get("startscript"),
        "test": meta.get("test"),
        "runscript.help": meta.get("help"),
        "Singularity": meta.get("deffile"),
    }
    for name, content in files.items():
        if content:
            p = os.path.join(d, name)
            with open(p, "w") as f:
                f.write(content)
            os.chmod(p, 0o755 if name in ("runscript", "startscript", "test") else 0o644)
    os.symlink(".singularity.d/env/90-environment.sh", os.path.join(skel, "environment"))
    os.symlink(".singularity.d/runscript", os.path.join(skel, "singularity"))


def mount_overlay(target: str, lowers: list, upper: str | None, work: str | None) -> None:
    opts = "lowerdir=" + ":".join(ovl_escape(x) for x in lowers)
    if upper:
        os.makedirs(upper, 0o755, exist_ok=True)
        os.makedirs(work, 0o755, exist_ok=True)
        opts += f",upperdir={ovl_escape(upper)},workdir={ovl_escape(work)}"
    sys_mount("overlay", target, "overlay", 0, opts + ",userxattr")


def mini_dev(target: str, nv_devices: list) -> None:
    sys_mount("tmpfs", target, "tmpfs", MS_NOSUID, "mode=0755,size=1m")
    for name in ["null", "zero", "full", "random", "urandom", "tty"] + [
        os.path.basename(d) for d in nv_devices
    ]:
        p = os.path.join(target, name)
        open(p, "w").close()
        sys_mount("/dev/" + name, p, None, MS_BIND)
    os.mkdir(os.path.join(target, "pts"))
    sys_mount("/dev/pts", os.path.join(target, "pts"), None, MS_BIND | MS_REC)
    os.symlink("pts/ptmx", os.path.join(target, "ptmx"))
    os.mkdir(os.path.join(target, "shm"))
    sys_mount("tmpfs", os.path.join(target, "shm"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for i, n in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", os.path.join(target, n))
    os.symlink("/proc/self/fd", os.path.join(target, "fd"))


def build_root(plan: dict) -> None:
    """Runs in the container's first process, just after unshare(CLONE_NEWNS)."""
    sys_mount(None, "/", None, MS_REC | MS_PRIVATE)
    mountpoints = host_mountpoints()
    contain = plan["contain"]
    entries = sorted(os.scandir("/"), key=lambda e: e.name)
    modes = {
        e.name: top_level_mode(e.name, mountpoints, contain)
        for e in entries
        if e.is_dir(follow_symlinks=False)
    }
    tmp_fd = os.open("/tmp", os.O_PATH | os.O_DIRECTORY)
    stage_name = f".apptainer-standin.{os.getpid()}.{os.urandom(4).hex()}"
    stage = "/tmp/" + stage_name
    os.mkdir(stage, 0o700)
    sys_mount("tmpfs", stage, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0755,size={SESSION_SIZE}")
    skel, root = stage + "/skel", stage + "/root"
    for d in ("skel", "skels", "empty", "root", "tmpup"):
        os.mkdir(os.path.join(stage, d))
    for e in entries:
        if e.is_symlink():
            os.symlink(os.readlink(e.path), os.path.join(skel, e.name))
        elif e.is_dir(follow_symlinks=False):
            os.mkdir(os.path.join(skel, e.name), 0o755)
            os.mkdir(os.path.join(stage, "skels", e.name))
        elif e.is_file(follow_symlinks=False):
            open(os.path.join(skel, e.name), "w").close()
    write_metadata(skel, plan["meta"])
    ops = plan_mounts(plan, modes)
    place_mountpoints(ops, modes, stage, bool(contain or plan["workdir"]))

    writable = next((o for o in plan["overlays"] if o["writable"]), None)
    read_only = [o for o in plan["overlays"] if not o["writable"]]

    def upper_of(sub: str) -> tuple[str | None, str | None]:
        if writable:
            return (
                os.path.join(writable["data"], sub),
                os.path.join(writable["data"], "work", sub),
            )
        if plan["writable_tmpfs"]:
            return os.path.join(stage, "tmpup", sub), os.path.join(stage, "tmpup", "work", sub)
        return None, None

    ro_root = [os.path.join(o["data"], "rootfs") for o in reversed(read_only)]
    upper, work = upper_of("rootfs")
    mount_overlay(root, ro_root + [skel, stage + "/empty"], upper, work)

    for e in entries:
        name = e.name
        target = os.path.join(root, name)
        if e.is_symlink():
            continue
        if e.is_file(follow_symlinks=False):
            sys_mount(e.path, target, None, MS_BIND)
            remount_ro(target)
            continue
        mode = modes.get(name)
        if mode == "overlay":
            ro = [os.path.join(o["data"], "dirs", name) for o in reversed(read_only)]
            ro = [p for p in ro if os.path.isdir(p)]
            upper, work = upper_of(os.path.join("dirs", name))
            skel_dir = os.path.join(stage, "skels", name)
            if not upper and not ro and not os.listdir(skel_dir):
                # nothing to add: a read-only bind keeps the host directory's owner and mode
                sys_mount(e.path, target, None, MS_BIND)
                remount_ro(target)
                continue
            host_mode = os.stat(e.path).st_mode & 0o7777
            os.chmod(skel_dir, host_mode)
            if upper and not os.path.isdir(upper):
                os.makedirs(upper, 0o755)
                os.chmod(upper, host_mode)
            # the host directory above the skeleton: existing entries keep their owner/mode
            mount_overlay(target, [*ro, e.path, skel_dir], upper, work)
        elif mode == "rbind" or (mode == "proc" and not plan["pid"]):
            sys_mount(e.path, target, None, MS_BIND | MS_REC)
        elif mode == "proc":
            sys_mount("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        elif mode == "minidev":
            mini_dev(target, plan["nv_devices"])
        elif mode == "tmp":
            if "tmp" in plan["no_mount"]:
                pass
            elif plan["workdir"]:
                sys_mount(os.path.join(plan["workdir"], "tmp"), target, None, MS_BIND)
            elif contain:
                sys_mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
            else:
                nested = any(_under(m, "/tmp") and m != "/tmp" for m in mountpoints)
                sys_mount("/tmp", target, None, MS_BIND | (MS_REC if nested else 0))
        elif mode == "home":
            sys_mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")

    for op in ops:
        if op.get("skip"):
            continue
        target = root + op["target"]
        if op.get("mkdir_at_mount"):
            _touch(target, op["isdir"])
        if op["kind"] == "tmpfs":
            sys_mount(
                "tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={op.get('mode', '0755')}"
            )
        else:
            sys_mount(op["src"], target, None, MS_BIND | MS_REC)
            if op["ro"]:
                remount_ro(target)
    if modes.get("home") == "home":
        remount_ro(os.path.join(root, "home"))
    if plan["hostname"]:
        sys_sethostname(plan["hostname"])

    os.chdir(root)
    sys_pivot_root(".", ".")
    sys_umount(".", MNT_DETACH)
    os.chdir("/")
    try:  # noqa: SIM105 - contextlib costs start-up time
        os.rmdir(stage_name, dir_fd=tmp_fd)
    except OSError:
        pass
    os.close(tmp_fd)
    prctl(PR_SET_NO_NEW_PRIVS, 1)


# ---------------------------------------------------------------------------------------------
# Inside the container: environment, working directory, the payload, and the init process.
# ---------------------------------------------------------------------------------------------
def container_environment(plan: dict) -> dict:
    """What Apptainer's action script does: keep only the image's environment scripts'
    results, then user-defined variables, then restore the forwarded host ones."""
    env_plan = plan["env"]
    exported = dict(env_plan["exported"])
    script = "/.singularity.d/env/90-environment.sh"
    try:
        with open(script) as f:
            text = f.read()
    except OSError:
        text = ""
    env: dict[str, str] = {}
    if any(x.strip() and not x.strip().startswith("#") for x in text.splitlines()):
        seed = {
            k: exported[k]
            for k in ("HOME", "PWD", "APPTAINER_NAME", "APPTAINER_CONTAINER")
            if k in exported
        }
        seed["PATH"] = DEFAULT_PATH
        status, output = run_capture(["/bin/sh", "-c", '. "$0" >&2; exec env -0', script], seed)
        if status != 0:
            raise Fatal(f"while sourcing {script}: exit status {status}")
        for item in output.split(b"\0"):
            key, eq, value = item.decode(errors="surrogateescape").partition("=")
            if eq and key not in ("SHLVL", "_", "OLDPWD"):
                env[key] = value
    env.update(env_plan["user"])
    for key, value in exported.items():
        if key not in env:
            env[key] = value
        elif env[key] == "":
            del env[key]
    edits = env_plan["path"]
    if "PATH" in edits:
        env["PATH"] = edits["PATH"]
    if "PREPEND_PATH" in edits:
        env["PATH"] = edits["PREPEND_PATH"] + ":" + env.get("PATH", "")
    if "APPEND_PATH" in edits:
        env["PATH"] = env.get("PATH", "") + ":" + edits["APPEND_PATH"]
    if not env.get("PS1"):
        env["PS1"] = "Apptainer> "
    if not env.get("PROMPT_COMMAND"):
        env["PROMPT_COMMAND"] = f'PS1="{env["PS1"]}"; unset PROMPT_COMMAND'
    env["APPTAINER_ENVIRONMENT"] = (
        env.get("APPTAINER_ENVIRONMENT") or "/.singularity.d/env/91-environment.sh"
    )
    env["SINGULARITY_ENVIRONMENT"] = env["APPTAINER_ENVIRONMENT"]
    return env


def run_capture(argv: list, env: dict) -> tuple[int, bytes]:
    """(exit code, stdout) of argv; fork/exec by hand, subprocess costs start-up time."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(w, 1)
            reset_signals_for_exec()
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return exit_code(status), b"".join(chunks)


def enter_cwd(plan: dict) -> None:
    if plan["target_cwd"]:
        try:
            os.chdir(plan["target_cwd"])
        except OSError as e:
            raise Fatal(f"failed to set working directory: {e.strerror}") from None
    else:
        for d in (plan["host_cwd"], plan["home"]["dest"], "/"):
            try:
                os.chdir(d)
                break
            except OSError:
                continue
    plan["env"]["exported"]["PWD"] = os.getcwd()


def action_argv(plan: dict, env: dict) -> list | None:
    """The payload for the action (what Apptainer's action script execs); None: nothing."""
    cmd, args = plan["command"], plan["args"]
    x_ok = lambda p: os.path.isfile(p) and os.access(p, os.X_OK)  # noqa: E731
    if cmd == "exec":
        return list(args)
    if cmd == "shell":
        shell = plan.get("shell")
        if shell and x_ok(shell):
            return [shell] + args
        if x_ok("/bin/bash"):
            env["SHELL"] = "/bin/bash"
            return ["/bin/bash", "--norc"] + args
        env["SHELL"] = "/bin/sh"
        return ["/bin/sh"] + args
    if cmd in ("run", "instance-run"):
        if x_ok("/.singularity.d/runscript"):
            return ["/.singularity.d/runscript"] + args
        info("No runscript found in container, executing /bin/sh")
        return ["/bin/sh"] + args
    if cmd == "test":
        if x_ok("/.singularity.d/test"):
            return ["/.singularity.d/test"] + args
        info("No test script found in container, exiting")
        return None
    if cmd == "start":
        if x_ok("/.singularity.d/startscript"):
            return ["/.singularity.d/startscript"] + args
        info("No instance start script found in container")
        return None
    raise Fatal(f"Unknown action {cmd}")


def lookpath(name: str, path: str) -> str:
    if "/" in name:
        if not os.path.exists(name):
            raise Fatal(f"stat {name}: no such file or directory")
        if os.path.isdir(name) or not os.access(name, os.X_OK):
            raise Fatal(f'"{name}": permission denied')
        return name
    for d in path.split(":"):
        p = os.path.join(d or ".", name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    raise Fatal(f'"{name}": executable file not found in $PATH')


def exec_payload(argv: list, env: dict) -> NoReturn:
    path = lookpath(argv[0], env.get("PATH", ""))
    reset_signals_for_exec()
    try:
        os.execve(path, argv, env)
    except OSError as e:
        import errno

        if e.errno == errno.ENOEXEC:
            os.execve("/bin/sh", ["/bin/sh", path] + argv[1:], env)
        raise Fatal(f"exec {argv[0]} failed: {e.strerror}") from None


def quiet_handlers() -> None:
    """PID 1 of a namespace only receives signals it handles: install no-op handlers (the
    signals stay blocked and are taken with sigwaitinfo)."""
    for s in WAIT_SIGNALS:
        signal.signal(s, lambda *_: None)


def init_loop(child: int | None, is_instance: bool) -> NoReturn:
    """The container's PID 1 (Apptainer's appinit/sinit): reap, forward, exit."""
    stop_sig = 0
    while True:
        si = signal.sigwaitinfo(WAIT_SIGNALS)
        if si.si_signo == signal.SIGCHLD:
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                if pid == child:
                    child = None
                    if not is_instance:
                        os._exit(exit_code(status))
                    if stop_sig:
                        os._exit(128 + stop_sig)
            continue
        sig = si.si_signo
        if is_instance:
            if child is None:
                os._exit(128 + sig)
            stop_sig = sig
            try:
                os.killpg(child, sig)
            except ProcessLookupError:
                os._exit(128 + sig)
        elif child is not None and si.si_code <= 0:
            try:  # noqa: SIM105 - contextlib costs start-up time
                os.kill(child, sig)
            except ProcessLookupError:
                pass


def start_payload(plan: dict, env: dict, argv: list, own_group: bool) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            if own_group:
                os.setpgid(0, 0)
            exec_payload(argv, env)
        except Fatal as e:
            die(e)
        except BaseException as e:  # noqa: BLE001 - a forked child must never return
            log("FATAL", str(e))
        os._exit(255)
    return pid


def container_child(plan: dict) -> NoReturn:
    """First process inside the new namespaces for exec/run/shell/test."""
    try:
        if plan["pid"]:
            quiet_handlers()
        sys_unshare(CLONE_NEWNS)
        build_root(plan)
        enter_cwd(plan)
        env = container_environment(plan)
        argv = action_argv(plan, env)
        if argv is None:
            os._exit(0)
        if plan["pid"]:
            init_loop(start_payload(plan, env, argv, False), False)
        exec_payload(argv, env)
    except Fatal as e:
        die(e)
    except OSError as e:
        die(Fatal(f"container creation failed: {e.strerror if e.filename is None else e}"))
    os._exit(255)


def run_action(plan: dict) -> int:
    """exec/run/shell/test of an image: new namespaces, then wait for the payload."""
    uid, gid = plan["uid"], plan["gid"]
    block_signals()
    try:
        sys_unshare(unshare_flags(plan))
        write_id_maps(plan["fakeroot"], uid, gid)
    except OSError as e:
        raise Fatal(f"container creation failed: {e}") from None
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        container_child(plan)
    code = wait_forwarding(child)
    for ov in plan["overlays"]:
        release_overlay_workdirs(ov)
    return code


# ---------------------------------------------------------------------------------------------
# Instances. State: $CONFIGDIR/instances/app/<host>/<user>/<name>/<name>.json; logs in
# $CONFIGDIR/instances/logs/<host>/<user>/<name>.{out,err}. The record's ppid is the
# "Apptainer instance: USER [NAME]" process, pid is the container's PID 1 (appinit).
# ---------------------------------------------------------------------------------------------
class InstancePaths:
    def __init__(self, pw, name: str, for_other: bool = False) -> None:
        base = os.path.join(config_dir(pw if for_other else None), "instances")
        host = hostname()
        self.app_dir = os.path.join(base, "app", host, pw.pw_name)
        self.dir = os.path.join(self.app_dir, name)
        self.record = os.path.join(self.dir, name + ".json")
        logs = os.path.join(base, "logs", host, pw.pw_name)
        self.logs = logs
        self.out = os.path.join(logs, name + ".out")
        self.err = os.path.join(logs, name + ".err")


def process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return (
        b"Apptainer instance:" in cmdline
        or b"instance\0start" in cmdline
        or b"instance\0run" in cmdline
    )


def write_record(path: str, rec: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(rec, f)
    os.replace(tmp, path)


def read_record(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def list_records(pw, pattern: str, for_other: bool = False) -> list:
    """Live records matching a glob, oldest name first; stale ones are removed silently."""
    import fnmatch
    import shutil

    app_dir = InstancePaths(pw, "x", for_other).app_dir
    try:
        names = sorted(os.listdir(app_dir))
    except OSError:
        return []
    out = []
    for name in names:
        if not fnmatch.fnmatchcase(name, pattern):
            continue
        rec = read_record(os.path.join(app_dir, name, name + ".json"))
        if rec is None or not process_alive(rec.get("ppid", 0)):
            if rec is not None or not os.path.exists(os.path.join(app_dir, name)):
                shutil.rmtree(os.path.join(app_dir, name), ignore_errors=True)
            continue
        if rec.get("pid", 0) > 0:
            out.append(rec)
    return out


def reserve_instance(paths: InstancePaths, name: str, image: str) -> None:
    """mkdir is the atomic claim on a name; a placeholder record names the claiming process."""
    import shutil

    cfg = config_dir()
    if not os.path.isdir(cfg):
        makedirs_mode(cfg, 0o700)
    os.makedirs(paths.app_dir, 0o755, exist_ok=True)
    for _ in range(2):
        try:
            os.mkdir(paths.dir, 0o755)
            break
        except FileExistsError:
            rec = read_record(paths.record)
            if rec is not None and process_alive(rec.get("ppid", 0)):
                raise Fatal(f"instance {name} already exists") from None
            shutil.rmtree(paths.dir, ignore_errors=True)
    else:
        raise Fatal(f"instance {name} already exists")
    write_record(paths.record, {"pid": 0, "ppid": os.getpid(), "name": name, "image": image})


def close_fds_except(keep: set) -> None:
    for fd in sorted(int(x) for x in os.listdir("/proc/self/fd")):
        if fd > 2 and fd not in keep:
            try:  # noqa: SIM105 - contextlib costs start-up time
                os.close(fd)
            except OSError:
                pass


def instance_daemon(plan: dict, paths: InstancePaths, name: str, w: int) -> NoReturn:
    """The "Apptainer instance: USER [NAME]" process: owns the record and the namespaces'
    first process; forwards signals to it and removes the record when it ends."""
    import shutil

    pw = me()
    try:
        os.setsid()
        null = os.open("/dev/null", os.O_RDWR)
        out = os.open(paths.out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        err = os.open(paths.err, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        for src, dst in ((null, 0), (out, 1), (err, 2)):
            os.dup2(src, dst)
        close_fds_except({w} | set(plan["lock_fds"]))
        set_title(f"Apptainer instance: {pw.pw_name} [{name}]")
        block_signals()
        sys_unshare(unshare_flags(plan) | CLONE_NEWPID)
        write_id_maps(plan["fakeroot"], plan["uid"], plan["gid"])
        me_pid = os.getpid()
        child = os.fork()
        if child == 0:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            appinit(plan, w)
        write_record(
            paths.record,
            {
                "pid": child,
                "ppid": me_pid,
                "name": name,
                "user": pw.pw_name,
                "image": plan["image"],
                "config": "",
                "userns": True,
                "cgroup": False,
                "ip": "",
                "logErrPath": paths.err,
                "logOutPath": paths.out,
                "checkpoint": "",
                "sharensMode": False,
            },
        )
        os.write(w, b"rec\n")
        os.close(w)
        wait_forwarding(child)
    except BaseException as e:  # noqa: BLE001 - report to `instance start`, never return
        try:  # noqa: SIM105 - contextlib costs start-up time
            os.write(w, f"fatal {e}\n".encode())
        except OSError:
            pass
    shutil.rmtree(paths.dir, ignore_errors=True)
    for ov in plan["overlays"]:
        release_overlay_workdirs(ov)
    os._exit(0)


def release_overlay_workdirs(ov: dict) -> None:
    """overlayfs leaves work/work with mode 000: make it removable by its owner again."""
    if not ov.get("writable"):
        return
    for base, dirs, _ in os.walk(os.path.join(ov["data"], "work")):
        for d in dirs:
            if d == "work":
                try:  # noqa: SIM105 - contextlib costs start-up time
                    os.chmod(os.path.join(base, d), 0o700)
                except OSError:
                    pass


def appinit(plan: dict, w: int) -> NoReturn:
    """PID 1 of an instance: builds the container, starts %startscript, then waits."""
    try:
        quiet_handlers()
        set_title("appinit")
        sys_unshare(CLONE_NEWNS)
        build_root(plan)
        enter_cwd(plan)
        env = container_environment(plan)
        argv = action_argv(plan, env)
    except Fatal as e:
        os.write(w, f"fatal {e}\n".encode())
        os._exit(255)
    except OSError as e:
        os.write(w, f"fatal container creation failed: {e.strerror}\n".encode())
        os._exit(255)
    os.write(w, b"ok\n")
    os.close(w)
    child = start_payload(plan, env, argv, True) if argv else None
    init_loop(child, True)


def cmd_instance_start(vals: dict, args: list, run: bool = False) -> int:
    import re

    need_args("run" if run else "start", args, 2)
    image_spec, name, extra = args[0], args[1], args[2:]
    if not re.match(NAME_RE, name):
        raise Fatal(f"{name} is not a valid instance name")
    pw = me()
    paths = InstancePaths(pw, name)
    image_abs = image_spec if uri_scheme(image_spec) else abspath(image_spec)
    list_records(pw, name)  # drops a stale record of this name
    reserve_instance(paths, name, image_abs)
    try:
        plan = make_plan("instance-run" if run else "start", vals, image_spec, extra, name)
        plan["pid"] = True
        os.makedirs(paths.logs, 0o755, exist_ok=True)
        for p in (paths.out, paths.err):
            os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
    except BaseException:
        import shutil

        shutil.rmtree(paths.dir, ignore_errors=True)
        raise
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    daemon = os.fork()
    if daemon == 0:
        os.close(r)
        instance_daemon(plan, paths, name, w)
    os.close(w)
    for fd in plan["lock_fds"]:
        os.close(fd)
    got, fatal = set(), None
    with os.fdopen(r, "rb") as f:
        for line in f:
            text = line.decode(errors="replace").rstrip("\n")
            if text.startswith("fatal "):
                fatal = text[6:]
                break
            got.add(text)
            if got >= {"rec", "ok"}:
                break
    if fatal is not None or not got >= {"rec", "ok"}:
        os.waitpid(daemon, 0)
        raise Fatal(fatal or "failed to start instance")
    if vals.get("pid_file"):
        rec = read_record(paths.record) or {}
        try:
            with open(vals["pid_file"], "w") as f:
                f.write(f"{rec.get('pid', 0)}\n")
        except OSError as e:
            warning(f"Failed to write pid file: could not create pid file: {e.strerror}")
    info("instance started successfully")
    return 0


def cmd_instance_list(vals: dict, args: list) -> int:
    need_args("list", args, 0, 1)
    if vals["json"] and vals["logs"]:
        raise Fatal("more than one flags have been set")
    if vals["user"] and os.getuid() != 0:
        raise Fatal("Only root user can list user's instances")
    pattern = args[0] if args else "*"
    if vals["user"]:
        recs = list_records(user_by_name(vals["user"]), pattern, for_other=True)
    else:
        recs = list_records(me(), pattern)
    if vals["json"]:
        items = [
            {
                "instance": r["name"],
                "pid": r["pid"],
                "img": r["image"],
                "ip": r["ip"],
                "logErrPath": r["logErrPath"],
                "logOutPath": r["logOutPath"],
            }
            for r in recs
        ]
        sys.stdout.write(json.dumps({"instances": items}, indent="\t") + "\n")
        return 0
    if vals["logs"]:
        rows = [["INSTANCE NAME", "PID", "LOGS"]]
        for r in recs:
            rows += [[r["name"], str(r["pid"]), r["logErrPath"]], ["", "", r["logOutPath"]]]
    else:
        rows = [["INSTANCE NAME", "PID", "IP", "IMAGE"]]
        rows += [[r["name"], str(r["pid"]), r["ip"], r["image"]] for r in recs]
    widths = [max(len(row[i]) for row in rows) + 4 for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)] + [row[-1]]
        sys.stdout.write("".join(cells) + "\n")
    return 0


def parse_signal(text: str) -> int:
    t = text.strip().upper()
    if t.isdigit():
        return int(t)
    if not t.startswith("SIG"):
        t = "SIG" + t
    try:
        return int(signal.Signals[t])
    except KeyError:
        raise Fatal(f"could not convert signal {text}: invalid signal") from None


def wait_gone(pids: list, timeout: float) -> list:
    """Poll until the processes are gone; returns those still alive at the deadline."""
    import time

    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive:
        alive = [p for p in alive if process_alive(p)]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    return alive


def cmd_instance_stop(vals: dict, args: list) -> int:
    need_args("stop", args, 0, 1)
    if vals["user"] and os.getuid() != 0:
        raise Fatal("Only root user can stop user's instances")
    if not args and not vals["all"]:
        raise UsageError("stop", "instance name or --all required")
    pattern = "*" if vals["all"] else args[0]
    sig = signal.SIGKILL if vals["force"] else parse_signal(vals["signal"] or "SIGINT")
    timeout = 10 if vals["timeout"] is None else vals["timeout"]
    if vals["user"]:
        recs = list_records(user_by_name(vals["user"]), pattern, for_other=True)
    else:
        recs = list_records(me(), pattern)
    if not recs:
        raise UsageError("stop", "no instance found")
    for r in recs:
        info(f"Stopping {r['name']} instance of {r['image']} (PID={r['pid']})")
        try:
            os.kill(r["pid"], sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            raise Fatal(f"could not stop instance {r['name']}: operation not permitted") from None
    left = set(wait_gone([r["ppid"] for r in recs], timeout))
    for r in recs:
        if r["ppid"] in left:
            info(f"Killing {r['name']} instance of {r['image']} (PID={r['pid']}) (Timeout)")
            try:  # noqa: SIM105 - contextlib costs start-up time
                os.kill(r["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
    if left:
        wait_gone(list(left), 5)  # the record goes with the instance process
    return 0


def join_instance(command: str, vals: dict, name: str, args: list) -> int:
    """exec/run/shell/test instance://NAME: join its namespaces, skip container setup."""
    pw = me()
    recs = [r for r in list_records(pw, name) if r["name"] == name]
    if not recs:
        raise Fatal(f"While setting image/instance: no instance found with name {name}")
    rec = recs[0]
    pid = rec["pid"]
    fds = []
    try:
        for ns, flag in (
            ("user", CLONE_NEWUSER),
            ("ipc", CLONE_NEWIPC),
            ("uts", CLONE_NEWUTS),
            ("net", CLONE_NEWNET),
            ("pid", CLONE_NEWPID),
            ("mnt", CLONE_NEWNS),
        ):
            if os.stat(f"/proc/{pid}/ns/{ns}").st_ino != os.stat(f"/proc/self/ns/{ns}").st_ino:
                fds.append((os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC), flag))
    except OSError as e:
        raise Fatal(f"While setting image/instance: {e.strerror}: {e.filename}") from None
    fakeroot = False
    home_dest = pw.pw_dir
    try:
        host_cwd = os.getcwd()
    except OSError:
        host_cwd = "/"
    block_signals()
    try:
        for fd, flag in fds:
            sys_setns(fd, flag)
            os.close(fd)
    except OSError as e:
        raise Fatal(f"While joining instance {name}: {e}") from None
    if os.getuid() == 0 and pw.pw_uid != 0:
        fakeroot, home_dest = True, "/root"
    env = host_environment(vals, home_dest)
    image = rec["image"]
    env["exported"].update(
        {
            "APPTAINER_COMMAND": command,
            "APPTAINER_CONTAINER": image,
            "APPTAINER_NAME": os.path.basename(image),
            "SINGULARITY_CONTAINER": image,
            "SINGULARITY_NAME": os.path.basename(image),
        }
    )
    plan = {
        "command": command,
        "args": args,
        "env": env,
        "shell": vals.get("shell"),
        "target_cwd": vals.get("cwd"),
        "host_cwd": host_cwd,
        "home": {"dest": home_dest},
        "fakeroot": fakeroot,
    }
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        try:
            enter_cwd(plan)
            env = container_environment(plan)
            argv = action_argv(plan, env)
            if argv is None:
                os._exit(0)
            prctl(PR_SET_NO_NEW_PRIVS, 1)
            exec_payload(argv, env)
        except Fatal as e:
            die(e)
        os._exit(255)
    return wait_forwarding(child)


# ---------------------------------------------------------------------------------------------
# build, pull, inspect. Nothing is downloaded and %post/%setup/%files/%test are not run: an
# image is its metadata (labels, environment, runscript, startscript, test, help, deffile).
# ---------------------------------------------------------------------------------------------
BOOTSTRAP_AGENTS = {
    "docker",
    "docker-daemon",
    "docker-archive",
    "oci",
    "oci-archive",
    "library",
    "oras",
    "shub",
    "localimage",
    "scratch",
    "busybox",
    "debootstrap",
    "yum",
    "dnf",
    "zypper",
    "arch",
}


def substitute_build_args(text: str, build_args: dict) -> str:
    import re

    defaults = {}
    in_args = False
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("%"):
            in_args = s.split()[0] == "%arguments"
            continue
        if in_args and "=" in s and not s.startswith("#"):
            k, _, v = s.partition("=")
            defaults[k.strip()] = v.strip()
    values = {**defaults, **build_args}

    def repl(m):
        key = m.group(1)
        if key not in values:
            raise Fatal(
                f"While performing build: build var {key} is not defined through "
                "either --build-arg (--build-arg-file) or 'arguments' section"
            )
        return values[key]

    return re.sub(r"{{\s*([A-Za-z_][A-Za-z0-9_]*)\s*}}", repl, text)


def parse_definition(text: str) -> list:
    """Stages of a definition file: [{"header": {...}, "sections": {name: text}}]."""
    stages: list = []
    current = None
    section = None
    for line in text.splitlines():
        stripped = line.strip()
        at_margin = not line[:1].isspace()
        if at_margin and stripped.startswith("%"):
            if current is None:
                raise Fatal("While performing build: invalid definition: no header")
            section = stripped[1:].split()[0].lower() if stripped[1:].split() else ""
            current["sections"].setdefault(section, "")
            continue
        key, sep, value = stripped.partition(":")
        new_stage = at_margin and sep and key.strip().lower() == "bootstrap"
        if section is not None and not new_stage:
            current["sections"][section] += line + "\n"
            continue
        if not stripped or stripped.startswith("#"):
            continue
        if not sep:
            raise Fatal(f"While performing build: invalid definition: bad header line {stripped!r}")
        if new_stage or current is None:
            current = {"header": {}, "sections": {}}
            stages.append(current)
            section = None
        current["header"][key.strip().lower()] = value.strip()
    if not stages or "bootstrap" not in stages[-1]["header"]:
        raise Fatal("While performing build: invalid definition: no Bootstrap header found")
    return stages


def meta_from_definition(text: str) -> dict:
    stage = parse_definition(text)[-1]
    header, sections = stage["header"], stage["sections"]
    agent = header["bootstrap"].lower()
    frm = header.get("from", "")
    if agent not in BOOTSTRAP_AGENTS:
        raise Fatal(
            f"While performing build: unable to get conveyorpacker: invalid build source {agent}"
        )
    if agent != "scratch" and not frm:
        raise Fatal(
            "While performing build: invalid definition: From header required for "
            f"bootstrap {agent}"
        )
    meta = empty_meta()
    if agent == "localimage":
        _, meta = open_image(frm)
    else:
        meta["source"] = f"{agent}://{frm}" if frm else ""
    labels = dict(meta.get("labels") or {})
    labels.update(standard_labels(agent, frm))
    for line in sections.get("labels", "").splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        key, _, value = s.partition(" ")
        labels[key] = value.strip()
    meta["labels"] = labels
    if "environment" in sections:
        base = (
            meta.get("environment")
            or "#!/bin/sh\n# Custom environment shell code should follow\n\n"
        )
        meta["environment"] = base + sections["environment"]
    for sec in ("runscript", "startscript", "test"):
        if sec in sections:
            meta[sec] = "#!/bin/sh\n\n" + sections[sec]
    if "help" in sections:
        meta["help"] = sections["help"]
        labels["org.label-schema.usage"] = "/.singularity.d/runscript.help"
        labels["org.label-schema.usage.apptainer.runscript.help"] = "/.singularity.d/runscript.help"
    meta["deffile"] = text
    debug("stand-in: %setup, %files and %post are not run")
    return meta


def cmd_build(vals: dict, args: list) -> int:
    need_args("build", args, 2, 2)
    out, spec = abspath(args[0]), args[1]
    if os.path.lexists(out) and not vals["force"] and not vals["update"]:
        raise Fatal(
            f"While checking build target: build target '{args[0]}' already exists. "
            "Use --force if you want to overwrite it"
        )
    build_args = {}
    if vals["build_arg_file"]:
        build_args.update(parse_env_file(vals["build_arg_file"]))
    for item in vals["build_arg"]:
        k, _, v = item.partition("=")
        build_args[k] = v
    info("Starting build...")
    if uri_scheme(spec):
        meta = empty_meta()
        meta["source"] = spec
        meta["labels"] = standard_labels()
        pull_failure(spec)
    elif os.path.isfile(spec) and read_image_file(spec) is None:
        try:
            with open(spec) as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise Fatal(f"While performing build: unable to read {spec}: {e}") from None
        meta = meta_from_definition(substitute_build_args(text, build_args))
    elif os.path.exists(spec):
        _, meta = open_image(spec)
    else:
        raise Fatal(
            f"While performing build: conveyor failed to get: unable to find {spec}: "
            "no such file or directory"
        )
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise Fatal(
            f"While performing build: while creating SIF: open {out}: no such file or directory"
        )
    if vals["sandbox"]:
        if os.path.lexists(out) and not os.path.isdir(out):
            os.unlink(out)
        os.makedirs(out, exist_ok=True)
        write_sandbox(out, meta)
    else:
        info("Creating SIF file...")
        if os.path.isdir(out) and not os.path.islink(out):
            import shutil

            shutil.rmtree(out)
        write_image(out, meta)
    info(f"Build complete: {args[0]}")
    return 0


def pull_default_name(uri: str) -> str:
    scheme, _, ref = uri.partition("://")
    if scheme in ("http", "https"):
        return os.path.basename(ref.split("?", 1)[0]) or "image.sif"
    base = ref.rstrip("/").rsplit("/", 1)[-1]
    if "@" in base:
        name, _, digest = base.partition("@")
        return f"{name}_{digest.replace(':', '_')}.sif"
    name, sep, tag = base.partition(":")
    return f"{name}_{tag if sep else 'latest'}.sif"


def pull_failure(uri: str) -> None:
    """No network here: references with a path component starting with "nonexistent" or
    "does-not-exist" fail the way a missing image fails (see README.md)."""
    scheme, _, ref = uri.partition("://")
    parts = ref.split("@", 1)[0].strip("/").split("/")
    if not any(p.startswith(("nonexistent", "does-not-exist")) for p in parts):
        return
    if scheme == "library":
        raise Fatal(
            f"While pulling library image: error fetching image: image does not exist "
            f"in the library: {ref}"
        )
    if scheme == "oras":
        raise Fatal(
            f"While pulling image from oci registry: failed to pull from {uri}: {ref}: not found"
        )
    raise Fatal(
        f"While making image from oci registry: error fetching image to cache: while "
        f"building SIF from layers: conveyor failed to get: reading manifest in "
        f"{ref}: manifest unknown: manifest unknown"
    )


def cmd_pull(vals: dict, args: list) -> int:
    need_args("pull", args, 1, 2)
    uri = args[-1]
    scheme = uri_scheme(uri)
    if scheme not in ("docker", "library", "oras", "shub", "http", "https"):
        raise Fatal(f"Unsupported transport type: {scheme or uri.split(':', 1)[0]}")
    if len(args) == 2:
        out = args[0]
    else:
        out = vals["name"] or pull_default_name(uri)
        if vals["dir"]:
            out = os.path.join(vals["dir"], out)
    out_abs = abspath(out)
    if os.path.lexists(out_abs) and not vals["force"]:
        raise Fatal(f'Image file already exists: "{out}" - will not overwrite')
    if not os.path.isdir(os.path.dirname(out_abs)):
        raise Fatal(f"While pulling image: open {out_abs}: no such file or directory")
    pull_failure(uri)
    if scheme == "docker":
        info("Converting OCI blobs to SIF format")
        info("Starting build...")
        info("Creating SIF file...")
    elif scheme == "library":
        info("Downloading library image")
    elif scheme == "oras":
        info("Downloading oras image")
    meta = empty_meta()
    meta["source"] = uri
    meta["labels"] = standard_labels()
    write_image(out_abs, meta)
    return 0


def inspect_attributes(meta: dict, vals: dict) -> dict:
    want_all = vals["all"]
    chosen = {
        k: vals[k] or want_all
        for k in (
            "labels",
            "deffile",
            "runscript",
            "startscript",
            "test",
            "environment",
            "helpfile",
        )
    }
    if not any(chosen.values()):
        chosen["labels"] = True
    attrs: dict = {}
    if chosen["labels"] and meta.get("labels"):
        attrs["labels"] = meta["labels"]
    if chosen["deffile"] and meta.get("deffile"):
        attrs["deffile"] = meta["deffile"]
    if chosen["runscript"] and meta.get("runscript"):
        attrs["runscript"] = meta["runscript"]
    if chosen["startscript"] and meta.get("startscript"):
        attrs["startscript"] = meta["startscript"]
    if chosen["test"] and meta.get("test"):
        attrs["test"] = meta["test"]
    if chosen["environment"]:
        attrs["environment"] = {
            "90-environment.sh": meta.get("environment")
            or "#!/bin/sh\n# Custom environment shell code should follow\n\n"
        }
    if chosen["helpfile"] and meta.get("help"):
        attrs["helpfile"] = meta["help"]
    return attrs


def cmd_inspect(vals: dict, args: list) -> int:
    need_args("inspect", args, 1, 1)
    if args[0].startswith("instance://"):
        name = args[0][len("instance://") :]
        recs = [r for r in list_records(me(), name) if r["name"] == name]
        if not recs:
            raise Fatal(f"no instance found with name {name}")
        _, meta = open_image(recs[0]["image"])
    else:
        _, meta = open_image(args[0])
    attrs = inspect_attributes(meta, vals)
    if vals["json"]:
        doc = {"data": {"attributes": attrs}, "type": "container"}
        sys.stdout.write(json.dumps(doc, indent="\t") + "\n")
        return 0
    out = []
    if "labels" in attrs:
        out += [f"{k}: {v}" for k, v in sorted(attrs["labels"].items())]
    for key in ("deffile", "runscript", "startscript", "test", "helpfile"):
        if key in attrs:
            out.append(attrs[key].rstrip("\n"))
    if "environment" in attrs:
        for name, content in attrs["environment"].items():
            out.append(f"=== /.singularity.d/env/{name} ===\n{content.rstrip()}")
    if out:
        sys.stdout.write("\n".join(out) + "\n")
    return 0


def cmd_cache(sub: str, vals: dict, args: list) -> int:
    import shutil

    cache = os.environ.get("APPTAINER_CACHEDIR") or os.path.join(me().pw_dir, ".apptainer", "cache")
    if sub == "list":
        sys.stdout.write(
            "There are 0 container file(s) using 0.00 KiB and 0 oci blob file(s) "
            "using 0.00 KiB of space\nTotal space used: 0.00 KiB\n"
        )
        return 0
    if not vals["force"]:
        sys.stdout.write(
            "This will delete everything in your cache (containers from all "
            "sources and OCI blobs).\nDo you want to continue? [y/N] "
        )
        sys.stdout.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            return 0
    if not vals["dry_run"] and os.path.isdir(cache):
        for entry in os.listdir(cache):
            shutil.rmtree(os.path.join(cache, entry), ignore_errors=True)
    return 0


# ---------------------------------------------------------------------------------------------
# Command dispatch
# ---------------------------------------------------------------------------------------------
def split_image_target(spec: str) -> str | None:
    return spec[len("instance://") :] if spec.startswith("instance://") else None


def cmd_action(command: str, opts, argv) -> int:
    vals, args = parse_opts(command, opts, argv)
    need_args(command, args, 2 if command == "exec" else 1)
    target, rest = args[0], args[1:]
    if command == "shell" and rest:
        warning(f"shell: ignoring extra arguments {' '.join(rest)}")
        rest = []
    name = split_image_target(target)
    if name is not None:
        return join_instance(command, vals, name, rest)
    return run_action(make_plan(command, vals, target, rest))


def print_help(cmd: str = "apptainer") -> int:
    sys.stdout.write(
        f"{usage_text(cmd)}This is the Apptainer stand-in for rx-slurm's tests "
        "(tests/standin/README.md).\n\nAvailable commands: build, exec, inspect, instance "
        "{start,run,list,stop}, overlay create, pull, run, shell, test, version, cache "
        "{list,clean}\n"
    )
    return 0


def dispatch(argv: list) -> int:
    global log_level
    gvals, rest = parse_opts("apptainer", GLOBAL_OPTS, argv)
    if gvals["debug"]:
        log_level = 5
    elif gvals["verbose"]:
        log_level = 4
    elif gvals["quiet"]:
        log_level = -1
    elif gvals["silent"]:
        log_level = -3
    if gvals["version"]:
        sys.stdout.write(f"apptainer version {VERSION}\n")
        return 0
    if not rest:
        if gvals["help"]:
            return print_help()
        sys.stderr.write(
            usage_text("apptainer")
            + "Run 'apptainer --help' for more detailed usage information.\n"
        )
        return 1
    cmd, argv = rest[0], rest[1:]
    if "-h" in argv[:1] or "--help" in argv[:1] or (cmd == "help"):
        return print_help(argv[0] if cmd == "help" and argv else cmd)
    action_opts = ACTION_OPTS + ACTION_ONLY_OPTS
    if cmd == "version":
        parse_opts("version", [], argv)
        need_args("version", argv, 0, 0)
        sys.stdout.write(VERSION + "\n")
        return 0
    if cmd in ("exec", "run", "test"):
        return cmd_action(cmd, action_opts, argv)
    if cmd == "shell":
        return cmd_action(cmd, action_opts + SHELL_OPTS, argv)
    if cmd == "instance":
        if not argv:
            raise UsageError("instance", "requires a subcommand")
        sub, sargv = argv[0], argv[1:]
        if sub in ("start", "run"):
            vals, args = parse_opts(sub, ACTION_OPTS + INSTANCE_START_OPTS, sargv)
            return cmd_instance_start(vals, args, run=sub == "run")
        if sub == "list":
            return cmd_instance_list(*parse_opts("list", INSTANCE_LIST_OPTS, sargv))
        if sub == "stop":
            return cmd_instance_stop(*parse_opts("stop", INSTANCE_STOP_OPTS, sargv))
        raise UsageError(sub, "invalid command")
    if cmd == "overlay":
        if not argv or argv[0] != "create":
            raise UsageError(argv[0] if argv else "overlay", "invalid command")
        return cmd_overlay_create(*parse_opts("create", OVERLAY_CREATE_OPTS, argv[1:]))
    if cmd == "build":
        return cmd_build(*parse_opts("build", BUILD_OPTS, argv))
    if cmd == "pull":
        return cmd_pull(*parse_opts("pull", PULL_OPTS, argv))
    if cmd == "inspect":
        return cmd_inspect(*parse_opts("inspect", INSPECT_OPTS, argv))
    if cmd == "cache":
        if not argv or argv[0] not in ("list", "clean"):
            raise UsageError(argv[0] if argv else "cache", "invalid command")
        opts = CACHE_LIST_OPTS if argv[0] == "list" else CACHE_CLEAN_OPTS
        return cmd_cache(argv[0], *parse_opts(argv[0], opts, argv[1:]))
    raise UsageError(cmd, "invalid command")


OPTS_BY_CMD = {
    "exec": ACTION_OPTS + ACTION_ONLY_OPTS,
    "run": ACTION_OPTS + ACTION_ONLY_OPTS,
    "test": ACTION_OPTS + ACTION_ONLY_OPTS,
    "shell": ACTION_OPTS + ACTION_ONLY_OPTS + SHELL_OPTS,
    "start": ACTION_OPTS + INSTANCE_START_OPTS,
    "list": INSTANCE_LIST_OPTS,
    "stop": INSTANCE_STOP_OPTS,
    "build": BUILD_OPTS,
    "pull": PULL_OPTS,
    "inspect": INSPECT_OPTS,
    "create": OVERLAY_CREATE_OPTS,
    "apptainer": GLOBAL_OPTS,
}


def main() -> None:
    try:
        code = dispatch(sys.argv[1:])
    except UsageError as e:
        print_usage_error(e, OPTS_BY_CMD.get(e.cmd, []))
        code = 1
    except Fatal as e:
        sys.stdout.flush()
        die(e)
    except OSError as e:  # anything unforeseen on the host side is still a FATAL, not a trace
        die(Fatal(f"{e.strerror}: {e.filename}" if e.filename else str(e)))
    except KeyboardInterrupt:
        code = 130
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
