"""Batch scripts rendered from templates by a pure function.

A template is a bash script in ``templates/`` (package data). It declares its parameters
in header lines ``#rx:param NAME`` (one word) or ``#rx:words NAME`` (a list of words) and uses
them as ``{{NAME}}``. Rendering:
- only declared parameters are accepted and all of them are required; an unknown key is an
  error that lists the valid ones;
- every value is ``shlex.quote``d, so it reaches bash as exactly one literal word; a words
  parameter takes a list or tuple, each item one quoted word, and stands only as the whole of a
  bash array, ``name=({{NAME}})`` (a command's argv: each word literal, never a shell line);
  a list for a one-word parameter, or one value for a words parameter, is refused;
- a value with a newline, carriage return or NUL is refused (it could end a line of the script
  or an ``#SBATCH`` header, and nothing legitimate needs one);
- the ``#rx:param`` and ``#rx:words`` lines are dropped from the output.

Because the quoting makes each value one whole shell word, a template may place ``{{NAME}}``
only where a word may start and end (after a space, ``=`` or ``(``; before a space, ``;`` or
``)``), never inside quotes, and never on an ``#SBATCH`` line (sbatch parses those itself, not
bash; the adapter passes options on sbatch's command line instead). Templates breaking these
rules fail to load.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from os import PathLike

_PARAM_DECL = re.compile(r"^#rx:(param|words)\s+([a-z_][a-z0-9_]*)\s*$")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_WORD_START = {"", " ", "\t", "=", "("}
_WORD_END = {"", " ", "\t", ";", ")"}
_FORBIDDEN_CHARS = {"\n": "a newline", "\r": "a carriage return", "\0": "a NUL byte"}


class TemplateError(ValueError):
    """A template that breaks the rules above, or values that do not fit it."""


@dataclass(frozen=True)
class Template:
    name: str
    params: tuple[str, ...]
    body: str  # the template without its #rx:param and #rx:words lines
    words: tuple[str, ...] = ()  # the parameters that are lists of words


def parse_template(name: str, text: str) -> Template:
    params: list[str] = []
    words: list[str] = []
    lines = []
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        decl = _PARAM_DECL.match(line.rstrip("\n"))
        if decl:
            if decl.group(2) in params:
                raise TemplateError(f"{name}:{number}: parameter {decl.group(2)!r} declared twice")
            params.append(decl.group(2))
            if decl.group(1) == "words":
                words.append(decl.group(2))
            continue
        if line.startswith("#rx:"):
            raise TemplateError(f"{name}:{number}: unknown directive {line.strip()!r}")
        for match in _PLACEHOLDER.finditer(line):
            where = f"{name}:{number}"
            if match.group(1) not in params:
                raise TemplateError(f"{where}: {{{{{match.group(1)}}}}} is not declared")
            if line.lstrip().startswith("#SBATCH"):
                raise TemplateError(f"{where}: placeholders are not allowed on #SBATCH lines")
            before = line[match.start() - 1] if match.start() > 0 else ""
            after = line[match.end()] if match.end() < len(line) else ""
            after = "" if after == "\n" else after
            if match.group(1) in words and (before, after) != ("(", ")"):
                raise TemplateError(
                    f"{where}: {{{{{match.group(1)}}}}} is a list of words: it stands only as "
                    "the whole of a bash array, name=({{...}})"
                )
            if before not in _WORD_START or after not in _WORD_END:
                raise TemplateError(
                    f"{where}: {{{{{match.group(1)}}}}} must stand as a whole shell word"
                    " (not inside quotes or glued to other text)"
                )
        lines.append(line)
    return Template(name, tuple(params), "".join(lines), tuple(words))


@lru_cache(maxsize=32)
def load_template(template_name: str) -> Template:
    """A template shipped in rxslurm.slurm's ``templates/`` folder, by file name."""
    if not _NAME.fullmatch(template_name):
        raise TemplateError(f"invalid template name {template_name!r}")
    source = resources.files("rxslurm.slurm").joinpath("templates", template_name)
    if not source.is_file():
        raise TemplateError(f"no template named {template_name!r}")
    return parse_template(template_name, source.read_text(encoding="utf-8"))


def _as_text(key: str, value: object) -> str:
    if isinstance(value, bool) or value is None:
        # True/False/None have no obvious shell spelling; make the caller choose one.
        raise TemplateError(f"{key}: give a string or a number, not {value!r}")
    if isinstance(value, str | int | float):
        text = str(value)
    elif isinstance(value, PathLike):
        text = str(value.__fspath__())
    else:
        raise TemplateError(f"{key}: unsupported value type {type(value).__name__}")
    for char, what in _FORBIDDEN_CHARS.items():
        if char in text:
            raise TemplateError(f"{key}: the value contains {what}")
    return text


def _quoted(template: Template, key: str, value: object) -> str:
    if key in template.words:
        if not isinstance(value, list | tuple):
            raise TemplateError(f"{key}: give a list of words, not {type(value).__name__}")
        return " ".join(shlex.quote(_as_text(key, item)) for item in value)
    return shlex.quote(_as_text(key, value))


def render(template: Template, values: dict[str, object]) -> str:
    unknown = sorted(set(values) - set(template.params))
    if unknown:
        raise TemplateError(
            f"{template.name}: unknown parameter(s) {', '.join(unknown)};"
            f" valid ones: {', '.join(template.params) or '(none)'}"
        )
    missing = [p for p in template.params if p not in values]
    if missing:
        raise TemplateError(f"{template.name}: missing parameter(s) {', '.join(missing)}")
    quoted = {k: _quoted(template, k, v) for k, v in values.items()}
    return _PLACEHOLDER.sub(lambda m: quoted[m.group(1)], template.body)


def render_batch_script(template_name: str, /, **values: object) -> str:
    """Render ``templates/<template_name>`` with ``values``; see the module docstring."""
    return render(load_template(template_name), values)


def template_params(template_name: str) -> tuple[str, ...]:
    return load_template(template_name).params
