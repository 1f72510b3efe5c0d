"""A Dockerfile as an Apptainer definition: checked line by line, then converted with spython.

spython 0.3.14's converter takes almost anything and writes a broken definition for much of it
(../shared/reference/apptainer-cli.md §2), so the Dockerfile is read here first, instruction by
instruction with its line number, and only what converts faithfully reaches spython:

- an unknown instruction, an instruction before ``FROM``, a ``FROM`` without an image, ``SHELL``,
  ``ONBUILD``, heredocs, ``COPY --from``, ``ADD`` of a URL: problems, with their lines;
- ``USER`` (spython writes ``su - u`` into ``%post``) and ``HEALTHCHECK`` (a stray ``CMD`` in
  ``%test``) are left out, ``--chown``/``--chmod`` of ``COPY``/``ADD`` (bogus ``%files`` lines)
  dropped, each with a note: an Apptainer container runs as the calling user;
- ``ADD`` of a local archive (spython writes ``tar -zvf``, no ``-x``) becomes a copy and an
  extraction, as Docker does it; ``RUN``'s exec form (a JSON list, which spython copies into
  ``%post`` as it is) becomes shell words;
- the runscript is written as Docker runs the image (spython puts ``/bin/bash`` before a CMD
  without ENTRYPOINT and copies the runscript into ``%startscript``); ``FROM x AS y`` loses the
  trailing space spython leaves; ``LABEL k="v"`` becomes ``%labels`` lines ``k v``.

spython is imported lazily: it is slow to import and only conversion needs it.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

from rxslurm.daemon.images.definition import Problem, check_definition

INSTRUCTIONS = frozenset(
    {
        "FROM",
        "RUN",
        "CMD",
        "LABEL",
        "MAINTAINER",
        "EXPOSE",
        "ENV",
        "ADD",
        "COPY",
        "ENTRYPOINT",
        "VOLUME",
        "USER",
        "WORKDIR",
        "ARG",
        "ONBUILD",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "SHELL",
    }
)
UNSUPPORTED = {
    "SHELL": "SHELL is not supported (the definition's %post runs /bin/sh)",
    "ONBUILD": "ONBUILD is not supported (Apptainer images have no build triggers)",
}
LEFT_OUT = {
    "USER": "USER left out: an Apptainer container runs as the user who starts it",
    "HEALTHCHECK": "HEALTHCHECK left out: Apptainer has no health checks",
    "STOPSIGNAL": "STOPSIGNAL left out: Apptainer instances stop with SIGTERM",
}
_ARCHIVE = re.compile(r".*\.(tar|tar\.gz|tgz|tar\.bz2|tbz2?|tar\.xz|txz)$")
_FLAG = re.compile(r"--([a-z-]+)(?:=(\S*))?")


class ConversionError(ValueError):
    """The Dockerfile cannot be converted; ``problems`` say where and why."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class Instruction:
    line: int  # where it starts (1-based)
    keyword: str  # upper case
    args: str  # continuation lines joined, as Docker reads them


@dataclass
class Conversion:
    definition: str
    notes: list[Problem] = field(default_factory=list)


def instructions(text: str) -> tuple[list[Instruction], list[Problem]]:
    """The Dockerfile's instructions with their first line, and the lines that are none."""
    found: list[Instruction] = []
    problems: list[Problem] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction is dropped, as Docker does
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        found_or_problem = _instruction(start, " ".join(p.strip() for p in pending))
        pending = []
        if isinstance(found_or_problem, Problem):
            problems.append(found_or_problem)
        else:
            found.append(found_or_problem)
    if pending:
        problems.append(Problem(start, "the last instruction ends with a line continuation"))
    return found, problems


def _instruction(line: int, text: str) -> Instruction | Problem:
    keyword, _, args = text.strip().partition(" ")
    upper = keyword.upper()
    if upper not in INSTRUCTIONS:
        return Problem(line, f"unknown instruction {keyword[:40]}")
    return Instruction(line, upper, args.strip())


def check_dockerfile(text: str) -> list[Problem]:
    """Every problem of a Dockerfile, its own and its conversion's; [] when it builds."""
    try:
        convert(text)
    except ConversionError as exc:
        return exc.problems
    return []


def convert(text: str) -> Conversion:
    """The definition for a Dockerfile, with notes on what was changed; ConversionError with
    every problem (line numbers of the Dockerfile) when it cannot be converted faithfully."""
    if not text.strip():
        raise ConversionError([Problem(0, "the Dockerfile is empty")])
    found, problems = instructions(text)
    notes: list[Problem] = []
    lines: list[str] = []
    seen_from = False
    for item in found:
        if item.keyword == "FROM":
            seen_from = True
            if not item.args or item.args.startswith("--"):
                problems.append(Problem(item.line, "FROM needs an image (FROM python:3.12-slim)"))
                continue
        elif not seen_from and item.keyword != "ARG":
            problems.append(Problem(item.line, f"{item.keyword} before the first FROM"))
            continue
        if item.keyword in UNSUPPORTED:
            problems.append(Problem(item.line, UNSUPPORTED[item.keyword]))
            continue
        if item.keyword in LEFT_OUT:
            notes.append(Problem(item.line, LEFT_OUT[item.keyword]))
            continue
        if "<<" in item.args and item.keyword in ("RUN", "COPY", "ADD"):
            problems.append(Problem(item.line, "heredocs (<<) are not supported"))
            continue
        if item.keyword in ("COPY", "ADD"):
            converted = _copy(item, problems, notes)
            lines.extend(converted)
            continue
        if item.keyword == "RUN":
            lines.append(f"RUN {_run_words(item.args)}")
            continue
        lines.append(f"{item.keyword} {item.args}")
    if not seen_from and not problems:
        problems.append(Problem(0, "no FROM: a Dockerfile starts from an image"))
    if problems:
        raise ConversionError(sorted(problems))
    definition = _spython(lines)
    later = check_definition(definition)
    if later:
        raise ConversionError(
            [Problem(0, f"the converted definition, line {p.line}: {p.message}") for p in later]
        )
    return Conversion(definition, notes)


def _run_words(args: str) -> str:
    """RUN's exec form (a JSON list) as shell words: spython copies the list into %post as it
    is. Anything else, a JSON list that is not one of strings included, is Docker's shell form."""
    if args.startswith("["):
        try:
            words = json.loads(args)
        except ValueError:
            return args
        if isinstance(words, list) and words and all(isinstance(w, str) for w in words):
            return shlex.join(words)
    return args


def _copy(item: Instruction, problems: list[Problem], notes: list[Problem]) -> list[str]:
    """COPY/ADD without the flags spython mangles; a local archive ADDed is extracted."""
    words = item.args.split()
    kept: list[str] = []
    for word in words:
        flag = _FLAG.fullmatch(word)
        if flag is None:
            kept.append(word)
        elif flag.group(1) == "from":
            problems.append(Problem(item.line, "COPY --from (multi-stage) is not supported"))
            return []
        elif flag.group(1) in ("chown", "chmod", "link"):
            notes.append(Problem(item.line, f"{item.keyword} --{flag.group(1)} left out"))
        else:
            problems.append(Problem(item.line, f"{item.keyword} --{flag.group(1)}: unknown flag"))
            return []
    if item.args.lstrip().startswith("["):
        problems.append(Problem(item.line, f"{item.keyword} in JSON form is not supported"))
        return []
    if len(kept) < 2:
        problems.append(Problem(item.line, f"{item.keyword} needs a source and a destination"))
        return []
    sources, dest = kept[:-1], kept[-1]
    if item.keyword == "ADD" and any("://" in s for s in sources):
        problems.append(Problem(item.line, "ADD of a URL is not supported (use RUN and curl)"))
        return []
    out: list[str] = []
    plain = [s for s in sources if not (item.keyword == "ADD" and _ARCHIVE.fullmatch(s))]
    if plain:
        out.append(f"COPY {' '.join(plain)} {dest}")
    for number, archive in enumerate(s for s in sources if s not in plain):
        staged = f"/tmp/rx-add-{item.line}-{number}"
        out.append(f"COPY {archive} {staged}")
        out.append(
            f"RUN mkdir -p {shlex.quote(dest)} && tar -xf {staged} -C {shlex.quote(dest)}"
            f" && rm -f {staged}"
        )
    return out


def _spython(lines: list[str]) -> str:
    # spython ships no types (it is used through these three names only).
    from spython.logger import bot  # type: ignore[import-untyped]
    from spython.main.parse.parsers import DockerParser  # type: ignore[import-untyped]
    from spython.main.parse.writers import SingularityWriter  # type: ignore[import-untyped]

    # Its warnings ("x doesn't exist") go to rxd's stderr otherwise; the problems are ours.
    bot.level = 0  # spython.logger.message.QUIET
    parser = DockerParser(filename=None, load=False)
    parser.lines = [line + "\n" for line in lines]
    try:
        parser.parse()
        recipes = parser.recipe
        definition = SingularityWriter(recipes).convert()
    except SystemExit:  # spython's logger exits on a recipe it cannot read
        raise ConversionError([Problem(0, "spython cannot convert this Dockerfile")]) from None
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
    """Replace spython's %runscript, drop its %startscript, fix the header and the labels."""
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
