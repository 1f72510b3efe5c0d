"""Image references as people write them: ``python:3.12-slim`` is ``docker://python:3.12-slim``.

A project's image is a file path on the nodes (``/...``) or a reference to a registry's image.
References follow the registries' own grammar (the OCI distribution spec's, as Docker reads it):
an optional registry host with its port, a repository of lowercase path components, then a tag
and/or a content digest (``@sha256:…``). Whatever the caller wrote, ``str()`` of the parsed
reference is what rx-slurm stores and shows; ``key`` is its identity (``python`` and
``docker.io/library/python:latest`` are one image), the name under which the digest it resolved to
is recorded. ``library://`` references (the Sylabs library, not an OCI registry) are kept as
written after the basic checks.

rxd and rxctl both read references with this module, so a reference means the same on both ends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

SCHEMES = ("docker", "oras", "library")
# Resolved to a content digest through the registry API (oras:// and the Sylabs library are
# cached by the reference as written, for now).
OCI_SCHEMES = ("docker",)
DOCKER_HUB = "docker.io"
# The host Docker Hub's registry API answers on, for the name people write.
DOCKER_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")
MAX_REFERENCE = 4096
MAX_NAME = 255

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?")
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"(?P<algo>[a-z][a-z0-9]*(?:[-_+.][a-z][a-z0-9]*)*):(?P<hex>[0-9a-f]{32,})")
_DIGEST_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}


class BadReference(ValueError):
    """Not an image reference; the message says what is wrong, without echoing much of it."""


@dataclass(frozen=True)
class ImageRef:
    """One image reference. ``registry`` is "" when none was written (Docker Hub's, for docker);
    ``tag`` and ``digest`` are "" when not written."""

    scheme: str
    registry: str
    repository: str
    tag: str = ""
    digest: str = ""

    def __str__(self) -> str:
        host = f"{self.registry}/" if self.registry else ""
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return f"{self.scheme}://{host}{self.repository}{tag}{digest}"

    @property
    def resolvable(self) -> bool:
        """Whether a registry API can say which content digest this reference names."""
        return self.scheme in OCI_SCHEMES

    @property
    def api_host(self) -> str:
        """The host (and port) whose ``/v2/`` API serves this image."""
        registry = self.full_registry
        return DOCKER_HUB_API if registry == DOCKER_HUB else registry

    @property
    def full_registry(self) -> str:
        if self.registry in _HUB_ALIASES or (not self.registry and self.scheme == "docker"):
            return DOCKER_HUB
        return self.registry

    @property
    def full_repository(self) -> str:
        """The repository as the registry names it (Docker Hub's official images: library/…)."""
        if self.full_registry == DOCKER_HUB and "/" not in self.repository:
            return f"library/{self.repository}"
        return self.repository

    @property
    def key(self) -> str:
        """The reference's identity: the same image however it was written (registry, library/
        prefix and the implied ``latest`` spelled out). A reference with a digest is that digest."""
        if not self.resolvable:
            return str(self)
        full = replace(self, registry=self.full_registry, repository=self.full_repository)
        if self.digest:
            return str(replace(full, tag=""))
        return str(replace(full, tag=self.tag or "latest"))

    def pinned(self, digest: str) -> ImageRef:
        """This image at exactly ``digest``, fully named: what a pull of a resolved tag asks for
        (a tag that moves meanwhile cannot change what is pulled)."""
        check_digest(digest)
        return ImageRef(self.scheme, self.full_registry, self.full_repository, "", digest)


def is_path(image: str) -> bool:
    """Whether ``image`` names a file on the nodes rather than a registry's image."""
    return image.startswith("/")


def check_digest(digest: str) -> str:
    """``algorithm:hex`` as registries write a content digest; BadReference otherwise."""
    match = _DIGEST.fullmatch(digest)
    if match is None:
        raise BadReference("a digest is written algorithm:hex, e.g. sha256:<64 hex digits>")
    want = _DIGEST_LENGTHS.get(match["algo"])
    if want is not None and len(match["hex"]) != want:
        raise BadReference(f"a {match['algo']} digest has {want} hex digits")
    return digest


def parse_reference(text: str) -> ImageRef:
    """The reference ``text`` names: ``docker://`` when no scheme is written. BadReference,
    saying what is wrong, for anything that is not one."""
    if not isinstance(text, str) or not text:
        raise BadReference("an image reference must be a non-empty string")
    if len(text) > MAX_REFERENCE or any(ch.isspace() or not ch.isprintable() for ch in text):
        raise BadReference("an image reference must be printable, without spaces, at most 4 KiB")
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "docker", text
    elif scheme not in SCHEMES:
        raise BadReference(
            f"cannot pull a {scheme[:20]}:// reference: only docker://, oras:// and library:// "
            "(or a bare name like python:3.12-slim, which is docker://)"
        )
    if not rest.strip("/"):
        raise BadReference(f"the {scheme}:// reference names no image")
    if scheme == "library":
        return ImageRef(scheme, "", rest)
    return _parse_oci(scheme, rest)


def _parse_oci(scheme: str, rest: str) -> ImageRef:
    name, at, digest = rest.partition("@")
    if at:
        check_digest(digest)
    registry = ""
    first, slash, remainder = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        if not _HOST.fullmatch(first):
            raise BadReference(f"{first[:64]!r} is not a registry host[:port]")
        registry, name = first, remainder
    path, tag = name, ""
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        path, _, tag = name.rpartition(":")
        if not _TAG.fullmatch(tag):
            raise BadReference(
                "a tag is at most 128 letters, digits, '_', '.' and '-', "
                "not starting with '.' or '-'"
            )
    if not path or not all(_COMPONENT.fullmatch(part) for part in path.split("/")):
        raise BadReference(
            "an image name is lowercase letters and digits, in parts separated by '/', each "
            "joined by '.', '_', '__' or dashes (e.g. python:3.12-slim, ghcr.io/org/tool:1)"
        )
    if len(registry) + len(path) + 1 > MAX_NAME:
        raise BadReference(f"an image name is at most {MAX_NAME} characters")
    return ImageRef(scheme, registry, path, tag, digest if at else "")


def normalize_image(image: str) -> str:
    """A project's image as rx-slurm keeps it: a path as written, a reference with its scheme
    (``python:3`` -> ``docker://python:3``). "" stays "" (the deployment's default)."""
    if not image or is_path(image):
        return image
    if "://" not in image and (image.startswith(".") or image.endswith(".sif")):
        # A relative file path is a valid name too (docker://images/tool.sif): never guess.
        raise BadReference(
            "image must be an absolute path or a docker://, oras:// or library:// reference; "
            f"{image[:64]!r} looks like a relative file path"
        )
    return str(parse_reference(image))
