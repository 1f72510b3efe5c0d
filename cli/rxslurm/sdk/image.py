"""`Image`: what a container runs. A registry reference or a SIF as they are, or a builder chain
rendered into one Apptainer definition and built by rxd's image builds (docs/images.md).

The chain is content-addressed: its draft and its build are named by the digest of the rendered
definition, so an unchanged chain finds its succeeded build and is not built again. Local files
(`add_local_file`, `add_local_dir`) take part through their contents' digests, which name their
folders in the build context (local_files.py) and so appear in the definition.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from shlex import quote as q
from typing import Literal

from rxslurm.protocol import env_vars
from rxslurm.sdk.errors import BadRequest
from rxslurm.sdk.local_files import STAGE, Upload, check_remote, local_dir, local_file

DOCKER = "docker://"
# Draft and build names: rxd's rule is 1-63 of [a-z0-9._-]; 16 hex digits (64 bits) of the
# digest make a clash between two chains of one project out of reach.
NAME_PREFIX = "sdk-"
DIGEST_CHARS = 16

Step = tuple[Literal["run", "env"], tuple[str, ...]]
# pip refuses to install into a distribution's Python (PEP 668, Debian 12's python3) unless told:
# an image is its builder's own system. An older pip ignores the variable.
PIP = "PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir"


def _words(what: str, items: Iterable[str]) -> tuple[str, ...]:
    words = tuple(items)
    if not words or not all(isinstance(w, str) and w.strip() for w in words):
        raise BadRequest(f"{what} needs one or more non-empty strings")
    if any("\n" in w or "\r" in w or "\0" in w for w in words):
        raise BadRequest(f"{what}: a line break or NUL in {words!r}")
    return words


@dataclass(frozen=True)
class Image:
    """An image. `Image.from_registry("python:3.12-slim")` and `Image.local("/path.sif")` are used
    as they are; each builder method returns a new Image with one more step, built by rxd."""

    base: str
    steps: tuple[Step, ...] = ()
    # What the build context holds: each added file or folder, uploaded before a build.
    uploads: tuple[Upload, ...] = ()

    @classmethod
    def from_registry(cls, reference: str) -> Image:
        """A registry image (`python:3.12-slim`, `docker://...`, `host:port/path:tag`)."""
        ref = reference.strip() if isinstance(reference, str) else ""
        if not ref or any(c.isspace() for c in ref):
            raise BadRequest(f"an image reference without spaces, not {reference!r}")
        return cls(ref if "://" in ref else DOCKER + ref)

    @classmethod
    def local(cls, path: str) -> Image:
        """A SIF file on the nodes (an absolute path)."""
        if not isinstance(path, str) or not path.startswith("/") or any(c.isspace() for c in path):
            raise BadRequest(f"Image.local needs an absolute path without spaces, not {path!r}")
        return cls(path)

    # -- the chain ---------------------------------------------------------------------------

    def apt_install(self, *packages: str) -> Image:
        words = " ".join(shlex.quote(p) for p in _words("apt_install", packages))
        return self.run_commands(
            "apt-get update",
            f"DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {words}",
            "rm -rf /var/lib/apt/lists/*",
        )

    def pip_install(self, *packages: str) -> Image:
        words = " ".join(shlex.quote(p) for p in _words("pip_install", packages))
        return self.run_commands(f"{PIP} {words}")

    def add_local_file(self, local: str | os.PathLike[str], remote: str) -> Image:
        """A file of this host copied to `remote` in the image (into that folder when `remote`
        ends with `/`), at this point of the chain: later steps see it. Its contents are read
        now (their digest is part of the image's) and uploaded to rxd when the image is built."""
        upload = local_file(local)
        target = check_remote(remote)
        if target.endswith("/"):
            target += upload.name
        parent = posixpath.dirname(target) or "/"
        source = f"{upload.staged}/{upload.name}"
        return self._add(upload, f"mkdir -p {q(parent)} && cp -a {q(source)} {q(target)}")

    def add_local_dir(self, local: str | os.PathLike[str], remote: str) -> Image:
        """A folder of this host: its files (at any depth, links followed) copied into the
        folder `remote` of the image, made if missing, at this point of the chain."""
        upload = local_dir(local)
        target = check_remote(remote).rstrip("/") or "/"
        source = upload.staged + "/."
        return self._add(upload, f"mkdir -p {q(target)} && cp -a {q(source)} {q(target)}")

    def _add(self, upload: Upload, command: str) -> Image:
        known = {u.key for u in self.uploads}
        uploads = self.uploads if upload.key in known else (*self.uploads, upload)
        return replace(self, steps=(*self.steps, ("run", (command,))), uploads=uploads)

    def run_commands(self, *commands: str) -> Image:
        """Shell commands run in order at build time (`%post`), each one line."""
        return replace(self, steps=(*self.steps, ("run", _words("run_commands", commands))))

    def env(self, variables: Mapping[str, str]) -> Image:
        """Variables of the image: later build steps and every command in the container see
        them."""
        try:
            checked = env_vars.check_variables(dict(variables), "image variable")
        except env_vars.BadVariable as exc:
            raise BadRequest(str(exc)) from None
        pairs = tuple(f"{k}={v}" for k, v in checked.items())
        if any("\n" in p or "\r" in p for p in pairs):
            raise BadRequest("image variables are one line each")
        return replace(self, steps=(*self.steps, ("env", pairs)))

    # -- what it is --------------------------------------------------------------------------

    @property
    def needs_build(self) -> bool:
        return bool(self.steps)

    def definition(self) -> str:
        """The Apptainer definition the chain builds."""
        if self.base.startswith(DOCKER):
            header = f"Bootstrap: docker\nFrom: {self.base.removeprefix(DOCKER)}\n"
        elif self.base.startswith("/"):
            header = f"Bootstrap: localimage\nFrom: {self.base}\n"
        else:
            agent, _, rest = self.base.partition("://")
            header = f"Bootstrap: {agent}\nFrom: {rest}\n"
        post: list[str] = []
        environment: list[str] = []
        for kind, words in self.steps:
            if kind == "run":
                post += list(words)
                continue
            for pair in words:
                name, _, value = pair.partition("=")
                line = f"export {name}={shlex.quote(value)}"
                post.append(line)
                environment.append(line)
        files = ""
        if self.uploads:
            # Every added file is staged whole first (Apptainer copies %files before %post);
            # its copy into place is a %post line at its place in the chain.
            files = "\n%files\n" + "".join(f"    {u.key} {u.staged}\n" for u in self.uploads)
            post.append(f"rm -rf {STAGE}")
        text = header + files + "\n%post\n" + "".join(f"    {line}\n" for line in post)
        if environment:
            text += "\n%environment\n" + "".join(f"    {line}\n" for line in environment)
        return text

    @property
    def digest(self) -> str:
        """sha256 of the definition: equal chains, equal digests."""
        return hashlib.sha256(self.definition().encode()).hexdigest()

    @property
    def build_name(self) -> str:
        """The draft's and the build's name in the project."""
        return NAME_PREFIX + self.digest[:DIGEST_CHARS]

    def reference(self) -> str:
        """What the project's image setting is for an image used as it is."""
        if self.needs_build:
            raise BadRequest("a builder chain is built first; it has no reference of its own")
        return self.base
