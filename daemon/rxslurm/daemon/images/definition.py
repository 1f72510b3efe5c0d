"""Checks of an Apptainer definition file before any job runs it: problems with line numbers.

What Apptainer's own parser would refuse later, on a node, after a wait in the queue, is said
here at once: a header without ``Bootstrap:`` (or without the ``From:`` its agent needs), a header
line that is not ``Key: value``, an unknown ``%section``, a ``%files`` or ``%labels`` line of the
wrong shape. It reads the text only; it never runs anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Apptainer's bootstrap agents (its build/sources), lower case as the parser compares them.
AGENTS = frozenset(
    {
        "docker",
        "docker-archive",
        "docker-daemon",
        "localimage",
        "library",
        "oras",
        "oci",
        "oci-archive",
        "shub",
        "scratch",
        "busybox",
        "debootstrap",
        "yum",
        "dnf",
        "zypper",
        "arch",
    }
)
# Agents that start from an image, which From: names.
NEEDS_FROM = frozenset(
    AGENTS - {"scratch", "busybox", "debootstrap", "yum", "dnf", "zypper", "arch"}
)
HEADER_KEYS = frozenset(
    {
        "bootstrap",
        "from",
        "stage",
        "include",
        "mirrorurl",
        "osversion",
        "updateurl",
        "fingerprints",
        "registry",
        "namespace",
        "product",
        "user",
        "regcode",
        "productpgp",
        "confirm",
        "setopt",
    }
)
SECTIONS = frozenset(
    {
        "setup",
        "files",
        "labels",
        "environment",
        "post",
        "runscript",
        "startscript",
        "test",
        "help",
        "arguments",
        "appinstall",
        "appfiles",
        "appenv",
        "apphelp",
        "applabels",
        "apprun",
        "appstart",
        "apptest",
    }
)
_HEADER_LINE = re.compile(r"([A-Za-z][A-Za-z0-9]*)\s*:\s*(.*)")
_SECTION_LINE = re.compile(r"%([A-Za-z][A-Za-z0-9_-]*)(?:\s+(.*))?")
# Control characters other than tab: a definition is text people edit.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True, order=True)
class Problem:
    """Something wrong at ``line`` (1-based; 0: the whole text)."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message

    def to_dict(self) -> dict[str, object]:
        return {"line": self.line, "message": self.message}


@dataclass
class _Stage:
    line: int  # where its header starts
    keys: dict[str, tuple[int, str]]
    reported: bool = False  # its missing Bootstrap: was said already


def check_definition(text: str) -> list[Problem]:
    """Every problem found in a definition file, in line order; [] when Apptainer would take it."""
    problems: list[Problem] = []
    if not text.strip():
        return [Problem(0, "the definition is empty")]
    stages: list[_Stage] = []
    section: str | None = None  # None: in a header
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if _CONTROL.search(raw):
            problems.append(Problem(number, "a control character (only tabs are allowed)"))
            continue
        stripped = line.strip()
        header = _HEADER_LINE.fullmatch(stripped)
        if header and header.group(1).lower() == "bootstrap" and not raw[:1].isspace():
            # A new stage (a multi-stage definition), or the first.
            stages.append(_Stage(number, {}))
            section = None
        if line.startswith("%"):
            match = _SECTION_LINE.fullmatch(line)
            name = match.group(1).lower() if match else line[1:].split(" ", 1)[0]
            if match is None or name not in SECTIONS:
                problems.append(
                    Problem(number, f"unknown section %{name[:40]} (known: %post, %files, ...)")
                )
                section = "?"
                continue
            if not stages:
                problems.append(Problem(number, f"%{name} before the header (Bootstrap: ...)"))
                stages.append(_Stage(number, {}, reported=True))
            section = name
            args = (match.group(2) or "").strip()
            if name == "files" and args and not re.fullmatch(r"from\s+\S+", args):
                problems.append(Problem(number, "%files takes only 'from STAGE' after it"))
            continue
        if section is None:
            if not stripped or stripped.startswith("#"):
                continue
            if header is None:
                problems.append(
                    Problem(number, f"not a header line (Key: value): {_shown(stripped)}")
                )
                continue
            key, value = header.group(1).lower(), header.group(2).strip()
            if not stages:
                problems.append(Problem(number, "the header must start with Bootstrap:"))
                stages.append(_Stage(number, {}, reported=True))
            if key not in HEADER_KEYS:
                problems.append(Problem(number, f"unknown header key {header.group(1)[:40]}:"))
                continue
            if key in stages[-1].keys:
                problems.append(Problem(number, f"{header.group(1)}: given twice"))
            stages[-1].keys[key] = (number, value)
            continue
        problems.extend(_section_line(section, number, stripped))
    if not stages:
        problems.append(Problem(0, "no header: a definition starts with Bootstrap: and From:"))
    for stage in stages:
        problems.extend(_check_stage(stage))
    return sorted(problems)


def _check_stage(stage: _Stage) -> list[Problem]:
    found: list[Problem] = []
    bootstrap = stage.keys.get("bootstrap")
    if bootstrap is None:
        return [] if stage.reported else [Problem(stage.line, "the header has no Bootstrap:")]
    line, agent = bootstrap[0], bootstrap[1].lower()
    if not agent:
        return [Problem(line, "Bootstrap: names no agent (e.g. docker, localimage)")]
    if agent not in AGENTS:
        found.append(Problem(line, f"unknown bootstrap agent {agent[:40]!r}"))
    elif agent in NEEDS_FROM and not stage.keys.get("from", (0, ""))[1]:
        found.append(Problem(line, f"Bootstrap: {agent} needs From: (the image to start from)"))
    return found


def _section_line(section: str, number: int, stripped: str) -> list[Problem]:
    if not stripped or stripped.startswith("#"):
        return []
    if section in ("files", "appfiles") and len(stripped.split()) > 2:
        return [Problem(number, f"a %files line is 'source [destination]': {_shown(stripped)}")]
    if section in ("labels", "applabels") and len(stripped.split(None, 1)) < 2:
        return [Problem(number, f"a %labels line is 'KEY value': {_shown(stripped)}")]
    return []


def _shown(text: str) -> str:
    return repr(text[:60] + ("…" if len(text) > 60 else ""))


def header_value(text: str, key: str) -> str:
    """The value of header ``key`` of the definition's last stage ("" when absent): its base."""
    value = ""
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        match = _HEADER_LINE.fullmatch(line)
        if match and match.group(1).lower() == "bootstrap" and not raw[:1].isspace():
            section, value = None, ""
        if raw.startswith("%"):
            section = raw
            continue
        if section is None and match and match.group(1).lower() == key.lower():
            value = match.group(2).strip()
    return value


def base_of(text: str) -> str:
    """What the image is built from, as people read it: ``docker://python:3.12``, a SIF path."""
    agent, source = header_value(text, "Bootstrap").lower(), header_value(text, "From")
    if not source:
        return agent
    if agent in ("docker", "oras", "library", "shub"):
        return f"{agent}://{source}"
    return source
