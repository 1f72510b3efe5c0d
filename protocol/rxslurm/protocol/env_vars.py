"""Environment variables a container gets from its project (`rxctl env`, `rxctl secret`) and
from one exec (`rxctl exec -e`): the name rule, the size caps, the names rx-slurm refuses, and
how they travel to Apptainer (docs/exec.md).

Standard library only: rxctl checks `-e` before it asks rxd, and `rxctl run` turns a batch
plan's variables into its step's environment.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# POSIX: letters, digits and underscores, not starting with a digit.
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_NAME = 128
MAX_VALUE = 32 * 1024
# Per project (variables, and secrets, each) and per exec: Linux's ARG_MAX (argv and the
# environment together) is 2 MiB; the container's own variables need room too.
MAX_COUNT = 100
MAX_TOTAL = 256 * 1024
# Apptainer sets NAME inside the container for each APPTAINERENV_NAME of the process that starts
# it, over the image's own %environment, and even under --cleanenv.
APPTAINER_ENV_PREFIX = "APPTAINERENV_"

# Prefixes whose variables change what the runtime does, not what the command sees.
RESERVED_PREFIXES: dict[str, str] = {
    "APPTAINER": "Apptainer reads its own settings from APPTAINER* variables",
    "SINGULARITY": "Apptainer reads its own settings from SINGULARITY* variables",
    "SLURM_": "Slurm sets SLURM_* for the job and reads some as options",
    "RXSLURM_": "rx-slurm's own programs read RXSLURM_* variables",
    "LD_": "the dynamic loader's LD_* variables (LD_PRELOAD, LD_LIBRARY_PATH) change what runs",
}
RESERVED_NAMES: dict[str, str] = {
    "HOME": "rx-slurm sets the runtime user's identity (HOME, USER, LOGNAME)",
    "USER": "rx-slurm sets the runtime user's identity (HOME, USER, LOGNAME)",
    "LOGNAME": "rx-slurm sets the runtime user's identity (HOME, USER, LOGNAME)",
    "PATH": "the image's PATH is the container's; set it in the image",
    "BASH_ENV": "a shell runs the file it names before every command",
    "ENV": "a shell runs the file it names before every command",
    "PWD": "the working directory is exec's --cwd",
    "TERM": "rxctl exec sets TERM from the caller's terminal",
}


class BadVariable(ValueError):
    """A name or value rx-slurm does not pass; the message says which and why, in one line."""


def refusal(name: str) -> str | None:
    """Why rx-slurm refuses `name` (a well-formed name), or None when it is the user's. The
    names are exact (`home` is not `HOME`); the prefixes are refused in any case, a mistyped
    `Apptainer_Bind` being no one's variable."""
    if name in RESERVED_NAMES:
        return RESERVED_NAMES[name]
    upper = name.upper()
    for prefix, why in RESERVED_PREFIXES.items():
        if upper.startswith(prefix):
            return why
    return None


def check_name(name: object, what: str = "variable") -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise BadVariable(
            f"{what} name {name!r} is not a POSIX name (letters, digits and _, not starting "
            "with a digit)"
        )
    if len(name) > MAX_NAME:
        raise BadVariable(f"{what} name {name[:20]}... is longer than {MAX_NAME} characters")
    why = refusal(name)
    if why:
        raise BadVariable(f"{what} name {name} is reserved: {why}")
    return name


def check_value(name: str, value: object, what: str = "variable") -> str:
    """A value: text without NUL, at most MAX_VALUE bytes as UTF-8. The message never quotes
    the value (it may be a secret)."""
    if not isinstance(value, str):
        raise BadVariable(f"the value of {what} {name} is not text")
    if "\x00" in value:
        raise BadVariable(f"the value of {what} {name} contains a NUL byte")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise BadVariable(f"the value of {what} {name} is not valid Unicode") from None
    if size > MAX_VALUE:
        raise BadVariable(f"the value of {what} {name} is longer than {MAX_VALUE} bytes")
    return value


def check_total(variables: Mapping[str, str], what: str = "variables") -> None:
    if len(variables) > MAX_COUNT:
        raise BadVariable(f"at most {MAX_COUNT} {what}, not {len(variables)}")
    total = sum(len(k) + len(v.encode()) + 2 for k, v in variables.items())
    if total > MAX_TOTAL:
        raise BadVariable(f"{what} take {total} bytes, more than {MAX_TOTAL}")


def check_variables(data: object, what: str = "variable") -> dict[str, str]:
    """A JSON object of name → value, every one checked, and their total."""
    if not isinstance(data, dict):
        raise BadVariable(f"{what}s must be a JSON object of names to values")
    checked = {check_name(k, what): check_value(k, v, what) for k, v in data.items()}
    check_total(checked, f"{what}s")
    return checked


def parse_assignment(text: str) -> tuple[str, str]:
    """`KEY=VALUE` (the value may be empty and may hold `=`), as `rxctl env set` and
    `rxctl exec -e` take it."""
    name, sep, value = text.partition("=")
    if not sep:
        raise BadVariable(f"{text[:40]!r} is not KEY=VALUE")
    return check_name(name), check_value(name, value)


def parse_assignments(texts: Iterable[str]) -> dict[str, str]:
    """Several `KEY=VALUE`; a later one of the same name wins, as in a shell."""
    result: dict[str, str] = {}
    for text in texts:
        name, value = parse_assignment(text)
        result[name] = value
    check_total(result)
    return result


def apptainer_env(variables: Mapping[str, str]) -> dict[str, str]:
    """The variables as the environment of the process that starts Apptainer: each becomes
    APPTAINERENV_NAME, which Apptainer sets as NAME inside the container."""
    return {APPTAINER_ENV_PREFIX + name: value for name, value in variables.items()}
