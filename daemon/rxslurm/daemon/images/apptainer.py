"""Apptainer on the daemon's host: version, inspect, overlays, Dockerfile conversion.

Pulls are not here: they run as an unprivileged account with their own limits (images/pull.py,
images/pool.py); spython's pull ran ``singularity`` as root with rxd's environment and no
time-out. Images are inspected through spython 0.3.14, which always runs ``singularity`` from
PATH (Apptainer installs it as a symlink to ``apptainer``). spython's own bugs are worked around
here rather than met at run time:

- ``Client.version`` prefers ``$SPYTHON_SINGULARITY_VERSION`` over asking the binary, and runs
  ``singularity`` from PATH rather than the configured program: the version is asked of the
  configured program directly, a health check must not report a version that is not the one run.
- ``Client.build`` defaults to ``sudo=True``, ``Client.run`` raises AttributeError when the
  payload writes to stderr, ``Client.instance_stopall`` sends a broken command to Apptainer and
  ``Instance.error_logs`` reads ``~/.singularity``: none of them is used. Instances run inside
  Slurm jobs and are driven by the batch script, not from the daemon.
- The Dockerfile writer prefixes a CMD without ENTRYPOINT with ``/bin/bash`` and copies the
  runscript into ``%startscript``; ``dockerfile_to_definition`` writes both sections itself.

``overlay create`` runs as the container's runtime user (the overlay lives in their folder and
must be theirs), which spython cannot do, so it is an argv run through ``rxslurm.slurm.runas``.
``find_binary`` is the one place the Apptainer program is chosen (``[apptainer] binary``, else
PATH): the holder script, exec steps and overlay creation all get its answer.
spython is imported lazily: it is slow to import and only these calls need it.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

from rxslurm.daemon.config import ApptainerConfig
from rxslurm.daemon.text_checks import reported_line
from rxslurm.slurm.runas import RunAs, run

OVERLAY_TIMEOUT = 600.0  # mkfs.ext3 of a large sparse file takes a while on slow disks
VERSION_TIMEOUT = 30.0
MIN_OVERLAY_MB = 64  # Apptainer refuses smaller overlays


class ApptainerError(RuntimeError):
    """Apptainer failed; the message is the tool's last FATAL line (or its last output line)."""

    def __init__(self, message: str, returncode: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.returncode = returncode


def last_fatal(output: str) -> str:
    """The text of the last ``FATAL:`` line, else the last non-empty line; it becomes a
    container's last_error, and may quote what a registry or an image said: no control or bidi
    characters, at most a few hundred characters."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("FATAL:"):
            return reported_line(line[len("FATAL:") :].strip())
    return reported_line(lines[-1]) if lines else "no output"


def _client() -> Any:
    from spython.main import Client

    return Client


def _output_text(message: object) -> str:
    """spython's result message: a string, or a list of [stdout, stderr] strings."""
    if isinstance(message, list):
        return "\n".join(str(m) for m in message)
    return str(message or "")


def apptainer_version(binary: str = "") -> str | None:
    """The installed version (``1.4.5``), or None when there is no Apptainer that runs."""
    try:
        program = find_binary(binary)
        result = subprocess.run(
            [program, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT
        )
    except (ApptainerError, OSError, subprocess.TimeoutExpired):
        return None
    text = result.stdout.strip()
    if result.returncode != 0 or not text:
        return None
    match = re.match(r"(?:apptainer|singularity)(?:-ce)? version (\S+)", text)
    return match.group(1) if match else text


def pull(uri: str, dest_dir: str | os.PathLike[str]) -> Path:
    """``uri``'s image in ``dest_dir``, pulled once as the pull account with the default limits
    (``[pulls]``); an image already there is reused. rxd itself pulls through images/pool.py,
    in the background; this is for tools and tests that fill a cache folder."""
    from dataclasses import replace

    from rxslurm.daemon.config import Config
    from rxslurm.daemon.images import cache as image_cache
    from rxslurm.daemon.images import pull as image_pull

    config = Config()
    config = replace(config, containers=replace(config.containers, image_dir=Path(dest_dir)))
    try:
        image_cache.check_reference(uri)
    except ValueError as exc:
        raise ApptainerError(str(exc)) from None
    cached = image_cache.cached_image(config.containers.image_dir, uri)
    if cached is not None:
        return cached
    return image_pull.pull(image_pull.PullSettings.from_config(config), uri)[0]


def inspect(image: str | os.PathLike[str]) -> dict[str, Any]:
    """The image's attributes: ``labels`` (a dict, maybe empty), and where present
    ``deffile``, ``runscript``, ``environment``, ``helpfile``, ``test``."""
    try:
        result = _client().inspect(str(image), quiet=True)
    except OSError as exc:
        raise ApptainerError(f"cannot run singularity: {exc.strerror}") from None
    if "return_code" in result:  # spython hands back the raw result when the tool failed
        raise ApptainerError(last_fatal(_output_text(result["message"])), result["return_code"])
    attributes = dict(result.get("attributes") or {})
    labels = attributes.get("labels")
    attributes["labels"] = labels if isinstance(labels, dict) else {}
    return attributes


@functools.lru_cache(maxsize=4)
def _on_path(path: str) -> str | None:
    return shutil.which("apptainer", path=path) or shutil.which("singularity", path=path)


def find_binary(configured: str = "") -> str:
    """The one Apptainer program rxd runs everywhere (holder script, exec steps, overlays):
    ``[apptainer] binary`` when set, else ``apptainer`` (or ``singularity``) on rxd's PATH,
    looked up once. An absolute path, because the holder and the steps run with a fixed PATH."""
    if configured:
        return configured
    found = _on_path(os.environ.get("PATH", os.defpath))
    if found is None:
        raise ApptainerError("apptainer not found on PATH; set [apptainer] binary in rxd's config")
    return os.path.abspath(found)


def program(settings: ApptainerConfig) -> str:
    """find_binary for the holder script and exec steps. When nothing is found they still get a
    command, ``apptainer``, and fail on the node with its error (rxd's health check names the
    cause): a missing program must not stop a reconciler pass or crash a request."""
    try:
        return find_binary(settings.binary)
    except ApptainerError:
        return "apptainer"


def instance_options(settings: ApptainerConfig, state_dir: Path, user: RunAs) -> dict[str, str]:
    """The holder script's Apptainer parameters for a container, from ``[apptainer]``: the
    program, --fakeroot, the home bound into the container, and whether /tmp is its own."""
    home = ""
    if settings.home == "project":
        # Under --fakeroot the user is root inside, whose home is /root.
        dest = "/root" if settings.fakeroot else user.home or f"/home/{user.user}"
        home = f"{state_dir}/home:{dest}"
    return {
        "apptainer": program(settings),
        "fakeroot": "--fakeroot" if settings.fakeroot else "",
        "home": home,
        "private_tmp": "yes" if settings.private_tmp else "",
    }


def create_overlay(
    path: str | os.PathLike[str], size_mb: int, as_user: RunAs, binary: str = ""
) -> None:
    """``apptainer overlay create`` as ``as_user``: the file is theirs, made with their rights.
    Sparse, so a large overlay costs no disk until it is written. ``binary``: the configured
    program (see find_binary)."""
    target = os.fspath(path)
    if not os.path.isabs(target):
        raise ValueError(f"overlay path must be absolute: {target!r}")
    if size_mb < MIN_OVERLAY_MB:
        raise ApptainerError(f"overlay size must be at least {MIN_OVERLAY_MB} MiB, not {size_mb}")
    argv = [find_binary(binary), "overlay", "create", "--sparse", "--size", str(size_mb), target]
    try:
        result = run(argv, as_user=as_user, timeout=OVERLAY_TIMEOUT)
    except OSError as exc:
        raise ApptainerError(f"cannot run {argv[0]}: {exc.strerror}") from None
    except subprocess.TimeoutExpired:
        raise ApptainerError(f"overlay create timed out after {OVERLAY_TIMEOUT:.0f} s") from None
    if result.returncode != 0:
        raise ApptainerError(last_fatal(result.stderr or result.stdout), result.returncode)


def dockerfile_to_definition(text: str) -> str:
    """A definition file for a Dockerfile, through spython's parser and writer, with the
    runscript made the way Apptainer makes it for a Docker image: ENTRYPOINT gets the
    arguments, CMD is the default the arguments replace. No %startscript: an image built from
    Docker has none, so an instance starts idle."""
    from spython.main.parse.parsers import DockerParser
    from spython.main.parse.writers import SingularityWriter

    parser = DockerParser(filename=None, load=False)
    parser.lines = [line + "\n" for line in text.splitlines()]
    try:
        parser.parse()
        recipes = parser.recipe
        definition = SingularityWriter(recipes).convert()
    except SystemExit:  # spython's logger exits on a recipe it cannot read
        raise ApptainerError("cannot convert the Dockerfile: no FROM line") from None
    last = list(recipes.values())[-1]
    runscript = _runscript(last.entrypoint, last.cmd)
    if runscript and last.workdir:
        runscript.insert(0, f"cd {shlex.quote(last.workdir)}")
    return _rewrite_definition(definition, runscript)


def _command_words(value: object) -> str | None:
    """Docker's exec form (a JSON list) as shell words; the shell form as ``/bin/sh -c``."""
    if value is None or value == [] or value == "":
        return None
    if isinstance(value, list):
        return shlex.join(str(v) for v in value)
    return f"/bin/sh -c {shlex.quote(str(value))}"


def _runscript(entrypoint: object, cmd: object) -> list[str] | None:
    ep, default = _command_words(entrypoint), _command_words(cmd)
    if ep and isinstance(entrypoint, str):
        return [f"exec {ep}"]  # Docker ignores CMD and arguments after a shell-form ENTRYPOINT
    if ep and default:
        return [f'if [ "$#" -gt 0 ]; then exec {ep} "$@"; fi', f"exec {ep} {default}"]
    if ep:
        return [f'exec {ep} "$@"']
    if default:
        return ['if [ "$#" -gt 0 ]; then exec "$@"; fi', f"exec {default}"]
    return None  # keep the base image's runscript


def _rewrite_definition(definition: str, runscript: list[str] | None) -> str:
    """Replace spython's %runscript, drop its %startscript, and fix the header and labels."""
    out: list[str] = []
    section = ""
    for line in definition.splitlines():
        if line.startswith("%"):
            section = line[1:].split(" ", 1)[0]
            if section in ("runscript", "startscript"):
                continue
            out.append(line)
            continue
        if section in ("runscript", "startscript"):
            continue
        if not section and line.startswith("From:"):
            line = line.rstrip()  # spython keeps the space before "AS stage"
        elif section == "labels":
            line = _label_line(line)
        out.append(line)
    if runscript:
        out += ["%runscript", *runscript]
    return "\n".join(out).rstrip() + "\n"


def _label_line(line: str) -> str:
    """``k="v" k2=v2`` (a Dockerfile LABEL) as Apptainer's ``KEY VALUE`` lines."""
    try:
        words = shlex.split(line)
    except ValueError:
        return line
    if words and all("=" in w for w in words):
        return "\n".join(f"{k} {v}" for k, v in (w.split("=", 1) for w in words))
    return line
