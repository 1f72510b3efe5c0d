"""`Image`: what a container runs. A registry reference or a SIF as they are, or a builder chain
rendered into one Apptainer definition and built by rxd's image builds (docs/images.md).

The chain is content-addressed: its draft and its build are named by the digest of the rendered
definition, so an unchanged chain finds its succeeded build and is not built again.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

from rxslurm.protocol import env_vars
from rxslurm.sdk.errors import BadRequest

DOCKER = "docker://"
# Draft and build names: rxd's rule is 1-63 of [a-z0-9._-]; 16 hex digits (64 bits) of the
# digest make a clash between two chains of one project out of reach.
NAME_PREFIX = "sdk-"
DIGEST_CHARS = 16

Step = tuple[Literal["run", "env"], tuple[str, ...]]


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
        return self.run_commands(f"python3 -m pip install --no-cache-dir {words}")

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
        text = header + "\n%post\n" + "".join(f"    {line}\n" for line in post)
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
