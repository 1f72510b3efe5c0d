"""One image pull, as the dedicated pull account, bounded in time and disk.

A reference (``docker://…``) is any registry's content chosen by any user: downloading and
unpacking it runs Apptainer's, umoci's and mksquashfs' parsers on hostile input, so it never runs
as root. The pull runs as ``pulls.user`` (a system account that is nobody's identity):

- in a fresh folder below the root-owned ``pulls.work_dir`` that only the account may write, which
  is also its HOME, cache and temporary folder: no registry credentials, no cache shared with
  another pull, nothing of root's environment (``runas.clean_env``);
- under ``prlimit --fsize`` (no file it writes grows past the cap) while rxd measures the whole
  folder and kills the pull when it holds more than ``pulls.max_mb``, or runs past
  ``pulls.timeout_s``;
- and its result is opened without following links, checked (a regular file of the account) and
  copied by root into ``image_dir`` as a root-owned file (see ``image_cache``).

The pull's folder is emptied as the pull account afterwards: root never deletes inside it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from rxslurm.daemon.config import Config
from rxslurm.daemon.images import cache as image_cache
from rxslurm.daemon.runtime.apptainer import ApptainerError, last_fatal, pull_binary, pull_command
from rxslurm.slurm.runas import SAFE_PATH, RunAs, RunAsError, kill_group, run, spawn

log = logging.getLogger("rxslurm.pulls")

OUTPUT = "image.sif"
SUBFOLDERS = ("home", "cache", "tmp")
POLL_S = 0.5
LOG_TAIL = 16 * 1024
CLEANUP_TIMEOUT = 300.0


class PullError(ApptainerError):
    """A pull failed; the message is its own reason (Apptainer's FATAL line, a limit, ...)."""


class PullCancelled(PullError):
    """rxd is stopping: the pull was ended and is taken up again at the next start."""


@dataclass(frozen=True)
class PullSettings:
    """Everything a pull needs, resolved once from the config."""

    account: RunAs
    work_dir: Path
    image_dir: Path
    binary: str
    timeout_s: float
    max_bytes: int
    plain_http: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: Config) -> PullSettings:
        return cls(
            account=pull_account(config),
            work_dir=config.pulls.work_dir,
            image_dir=config.containers.image_dir,
            binary=pull_binary(config.apptainer.binary),
            timeout_s=float(config.pulls.timeout_s),
            max_bytes=config.pulls.max_mb << 20,
            plain_http=config.pulls.plain_http,
        )


def pull_account(config: Config) -> RunAs:
    """The account pulls run as, checked: it exists, is not root, is a system account (below
    ``identity.min_uid``, so nobody is bound to it) and is not the runtime service account."""
    name = config.pulls.user
    if not name:
        raise PullError("this deployment pulls no images (pulls.user is empty): use an image file")
    try:
        account = RunAs.for_user(name)
    except RunAsError as exc:
        raise PullError(f"pulls.user: {exc}") from None
    if account.uid >= config.identity.min_uid:
        raise PullError(
            f"pulls.user {name} (uid {account.uid}) must be a system account with a uid below "
            f"identity.min_uid ({config.identity.min_uid}), so that no researcher can be it"
        )
    if name == config.runtime.service_account:
        raise PullError(f"pulls.user {name} must not be the runtime service account")
    return account


def registry_of(uri: str) -> str:
    """``host[:port]`` of a reference, or "" when it names none (``docker://python:3``)."""
    first = uri.split("://", 1)[1].split("/", 1)
    if len(first) == 2 and ("." in first[0] or ":" in first[0] or first[0] == "localhost"):
        return first[0]
    return ""


def pull_argv(settings: PullSettings, uri: str, output: str) -> list[str]:
    """``prlimit`` caps every file the pull writes (and forbids core dumps, which would be
    written into the folder too); ``--no-https`` only for registries the config names."""
    prlimit = shutil.which("prlimit", path=SAFE_PATH)
    if prlimit is None:
        raise PullError("prlimit (util-linux) is not installed; pulls need it")
    plain_http = registry_of(uri) in settings.plain_http
    return [
        prlimit,
        f"--fsize={settings.max_bytes}",
        "--core=0",
        "--",
        *pull_command(settings.binary, uri, output, plain_http=plain_http),
    ]


def pull_env(folder: Path) -> dict[str, str]:
    """On top of ``runas.clean_env``: every place Apptainer writes or reads its settings (and a
    registry login) is inside this pull's own folder."""
    return {
        "HOME": str(folder / "home"),
        "APPTAINER_CACHEDIR": str(folder / "cache"),
        "APPTAINER_TMPDIR": str(folder / "tmp"),
        "APPTAINER_CONFIGDIR": str(folder / "home" / ".apptainer"),
        "TMPDIR": str(folder / "tmp"),
    }


def disk_used(folder_fd: int) -> int:
    """Bytes allocated below the folder, walked by descriptor without following links (the
    pull account controls what is in it)."""
    total = 0
    for _, dirs, files, dir_fd in os.fwalk(".", dir_fd=folder_fd, follow_symlinks=False):
        for name in (*dirs, *files):
            with contextlib.suppress(OSError):
                total += os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_blocks * 512
    return total


def _make_folder(settings: PullSettings) -> tuple[Path, int]:
    """A fresh folder for one pull, and a descriptor of it held for the pull's lifetime.
    Made and filled by root while it is root's, then handed over: nothing to race."""
    image_cache.check_root_folder(settings.work_dir, "pulls.work_dir")
    folder = settings.work_dir / f"pull-{secrets.token_hex(8)}"
    os.mkdir(folder, 0o700)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    account = settings.account
    for name in SUBFOLDERS:
        os.mkdir(name, 0o700, dir_fd=fd)
        os.chown(name, account.uid, account.gid, dir_fd=fd, follow_symlinks=False)
    os.fchown(fd, account.uid, account.gid)
    return folder, fd


def clean_folder(folder: Path, account: RunAs) -> None:
    """Empty the pull's folder as the pull account, then remove it (root rmdirs an empty folder
    in its own work_dir). What cannot be removed is left for the next start's sweep."""
    try:
        # Unpacked trees may hold read-only folders; chmod -R does not follow symlinks.
        run(["chmod", "-R", "u+rwX", "--", str(folder)], as_user=account, timeout=CLEANUP_TIMEOUT)
        run(
            ["find", str(folder), "-mindepth", "1", "-delete"],
            as_user=account,
            timeout=CLEANUP_TIMEOUT,
        )
        os.rmdir(folder)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("cannot remove a pull folder", extra={"folder": str(folder), "error": str(exc)})


def sweep(settings: PullSettings) -> None:
    """Remove the folders of pulls that a stopped rxd left behind."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(settings.work_dir):
            if entry.name.startswith("pull-") and entry.is_dir(follow_symlinks=False):
                clean_folder(Path(entry.path), settings.account)


def _reason(returncode: int, output: str, used: int, settings: PullSettings) -> str:
    cap = f"{settings.max_bytes >> 20} MiB"
    too_large = (
        returncode in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ)
        or "file too large" in output.lower()
        or used >= settings.max_bytes
    )
    if too_large:
        return f"the image needs more than the {cap} a pull may use (pulls.max_mb)"
    return last_fatal(output)


def pull(
    settings: PullSettings,
    uri: str,
    cancel: threading.Event | None = None,
    name: str | None = None,
) -> tuple[Path, int]:
    """Pull ``uri`` into ``image_dir`` as ``name`` (default: the reference's own name); returns
    the installed image and its size in bytes.

    Raises PullError with the pull's own reason: Apptainer's FATAL line, the time-out, the size
    cap, or a result that is not a regular file of the pull account.
    """
    image_cache.check_reference(uri)
    argv = pull_argv(settings, uri, OUTPUT)  # fails before any folder is made
    folder, folder_fd = _make_folder(settings)
    try:
        with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as out:
            proc = spawn(
                argv,
                settings.account,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(folder),
                env_extra=pull_env(folder),
            )
            used = _watch(proc, settings, folder_fd, cancel)
            out.seek(0, os.SEEK_END)
            out.seek(max(0, out.tell() - LOG_TAIL))
            output = out.read()
        if proc.returncode != 0:
            raise PullError(_reason(proc.returncode, output, used, settings), proc.returncode)
        try:
            image_fd = image_cache.open_pulled(
                folder_fd, OUTPUT, settings.account.uid, settings.max_bytes
            )
        except FileNotFoundError:
            raise PullError(f"the pull made no image: {last_fatal(output)}") from None
        except (OSError, image_cache.UnsafeImageDir) as exc:
            raise PullError(f"refused the pulled file: {exc}") from None
        try:
            size = os.fstat(image_fd).st_size
            target = name or image_cache.image_file_name(uri)
            return image_cache.install(image_fd, settings.image_dir, target), size
        finally:
            os.close(image_fd)
    finally:
        os.close(folder_fd)
        clean_folder(folder, settings.account)


def _watch(
    proc: subprocess.Popen[str],
    settings: PullSettings,
    folder_fd: int,
    cancel: threading.Event | None,
) -> int:
    """Wait for the pull, killing it at the time-out, at the size cap or on cancel; the most
    disk it was seen to use."""
    deadline = time.monotonic() + settings.timeout_s
    peak = 0
    try:
        while proc.poll() is None:
            if cancel is not None and cancel.is_set():
                raise PullCancelled("rxd stopped during the pull; it starts again with rxd")
            if time.monotonic() > deadline:
                raise PullError(
                    f"the pull did not finish within {settings.timeout_s:.0f} s (pulls.timeout_s)"
                )
            walked = time.monotonic()
            peak = max(peak, disk_used(folder_fd))
            if peak > settings.max_bytes:
                raise PullError(
                    f"the image needs more than the {settings.max_bytes >> 20} MiB a pull may use "
                    "(pulls.max_mb)"
                )
            # A large unpacked tree takes a while to walk: never spend most of the time on it.
            pause = max(POLL_S, 4 * (time.monotonic() - walked))
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=pause)
    except BaseException:
        kill_group(proc)
        proc.wait()
        raise
    return peak


def pull_into(uri: str, dest_dir: str | os.PathLike[str]) -> Path:
    """``uri``'s image in ``dest_dir``, pulled once as the pull account with the default limits
    (``[pulls]``); an image already there is reused. rxd itself pulls through containers/pulls.py,
    in the background; this is for tools and tests that fill a cache folder."""
    config = Config()
    config = replace(config, containers=replace(config.containers, image_dir=Path(dest_dir)))
    try:
        image_cache.check_reference(uri)
    except ValueError as exc:
        raise ApptainerError(str(exc)) from None
    cached = image_cache.cached_image(config.containers.image_dir, uri)
    if cached is not None:
        return cached
    return pull(PullSettings.from_config(config), uri)[0]
