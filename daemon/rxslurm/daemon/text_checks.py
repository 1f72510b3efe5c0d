"""Refusing hostile text: control and bidi characters, broken Unicode, over-long values.

rxd stores what people send and shows it to other people (members, admins, terminals, logs), so a
string that reaches the ledger must be plain, printable text of a bounded size. Control characters
(C0, DEL, C1) can drive a terminal; bidi overrides make text read differently from what it is;
lone surrogates cannot even be stored (SQLite wants UTF-8); line and paragraph separators end lines
in some viewers. None of them belongs in a name, an image reference or a display name.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from rxslurm.daemon.errors import BadRequest

# Explicit formatting characters that reorder how text is shown (Unicode TR#9): ALM, LRM, RLM,
# LRE..RLO, LRI..PDI. Other format characters (e.g. the zero-width joiner in emoji) are harmless.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
# Cc: C0, DEL and C1 controls; Cs: lone surrogates; Zl/Zp: line and paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def _refused(char: str) -> bool:
    return char in BIDI_CONTROLS or unicodedata.category(char) in _REFUSED_CATEGORIES


def bad_character(text: str) -> str | None:
    """The first character of `text` that may not be stored, or None."""
    for char in text:
        if _refused(char):
            return char
    return None


def replace_bad(text: str, replacement: str = "?") -> str:
    """`text` with every character `bad_character` would refuse replaced: for text rxd did not
    choose and must keep anyway (what a user's process wrote), rather than refuse."""
    return "".join(replacement if _refused(char) else char for char in text)


def utf8_size(text: str) -> int:
    # surrogatepass: a lone surrogate is refused by bad_character, not here with a crash.
    return len(text.encode("utf-8", "surrogatepass"))


def check_text(label: str, value: Any, max_bytes: int, *, allow_empty: bool = True) -> str:
    """`value` if it is a string of printable text of at most `max_bytes` UTF-8 bytes."""
    if not isinstance(value, str):
        raise BadRequest(f"{label} must be a string")
    if not value and not allow_empty:
        raise BadRequest(f"{label} must not be empty")
    if utf8_size(value) > max_bytes:
        raise BadRequest(f"{label} is too long (at most {max_bytes} bytes)")
    char = bad_character(value)
    if char is not None:
        raise BadRequest(
            f"{label} must not contain control or bidi characters (found U+{ord(char):04X})"
        )
    return value


# How much of a line another program wrote (the holder, Apptainer) rxd keeps as a reason.
MAX_REPORTED_CHARS = 512


def reported_line(text: str, limit: int = MAX_REPORTED_CHARS) -> str:
    """A line another program wrote, fit to store and show: unsafe characters replaced, cut."""
    return shorten(replace_bad(text), limit)


def shorten(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters (limit >= 40), saying how much was left out."""
    if len(text) <= limit:
        return text
    # Sized for the longest count there could be, so the result never exceeds `limit`.
    room = limit - len(f"… ({len(text)} more characters)")
    return f"{text[:room]}… ({len(text) - room} more characters)"


# Colour and cursor sequences (CSI: ESC [ parameters final) that programs write when they think
# a terminal reads them: dropped whole rather than shown as "?[31m".
_CSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
_KEPT_IN_OUTPUT = frozenset("\n\t")


def safe_output(text: str) -> str:
    """Many lines another program wrote (a job's output), fit to show on a member's terminal:
    newlines and tabs stay, a carriage return ends a line, colour sequences go, and every other
    character `bad_character` would refuse becomes "?"."""
    text = _CSI.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return "".join(char if char in _KEPT_IN_OUTPUT or not _refused(char) else "?" for char in text)
