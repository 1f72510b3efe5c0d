"""Property tests: random and hostile bytes through every Slurm output parser (fast, no Slurm).

Any cluster user chooses their jobs' names, comments and limits, so squeue's output is partly
theirs. Whatever it holds, a parser answers a Listing (or ParseError for an answer cut short),
never more jobs than records, every record it could not read listed as skipped, and a hostile
record never hides or changes a well-formed one.
"""

from __future__ import annotations

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rxslurm.daemon.config import Config
from rxslurm.daemon.containers.service import container_id_from_comment
from rxslurm.slurm.adapter import SACCT_FIELDS, parse_sacct_text
from rxslurm.slurm.jobs import (
    QUEUE_FIXED_FIELDS,
    Listing,
    ParseError,
    parse_queue_text,
    parse_time_limit,
    queue_marker,
)

NONCE = "0123456789abcdef"
MARKER = queue_marker(NONCE)
SHOWN_MAX = 160
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text as a hostile user would pick it: Slurm's separators, newlines, digits of other scripts.
hostile_chars = st.sampled_from(list("|\n\r\t:-_ ²٣０\x00\x1b\u202e") + list(string.printable))
hostile_text = st.text(alphabet=st.one_of(hostile_chars, st.characters()), max_size=60)
bytes_as_text = st.binary(max_size=400).map(lambda b: b.decode("utf-8", "replace"))


def well_formed(job_id: int, name: str, comment: str) -> str:
    fixed = [str(job_id), "PENDING", "JobHeldUser", "rxalice", "cpu", "", "N/A", "1:00:00"]
    fixed += ["1795444485", "N/A", "N/A", "0"]
    return "|".join(fixed) + "|" + name + MARKER + comment + MARKER + "\n"


def hostile_record(fields: list[str], name: str, comment: str) -> str:
    return "|".join(fields) + "|" + name + MARKER + comment + MARKER + "\n"


def check_bounded(found: Listing, records: int) -> None:
    assert isinstance(found, Listing)
    assert len(found) <= records
    for skipped in found.skipped:
        assert len(skipped.record) <= SHOWN_MAX and len(skipped.reason) <= SHOWN_MAX
        assert skipped.job_id is None or 0 <= skipped.job_id < 10**18


@FAST
@given(st.one_of(hostile_text, bytes_as_text))
def test_queue_text_any_text_is_a_listing_or_a_parse_error(text: str) -> None:
    for candidate in (text, text + MARKER + "\n"):
        try:
            found = parse_queue_text(candidate, NONCE)
        except ParseError:
            continue
        check_bounded(found, candidate.count(MARKER + "\n"))


@FAST
@given(
    st.lists(
        st.tuples(
            st.lists(hostile_text, min_size=len(QUEUE_FIXED_FIELDS), max_size=13),
            hostile_text,
            hostile_text,
        ),
        max_size=6,
    ),
    # A good record's comment never starts with a newline: rx-slurm writes its own comments. (One
    # that does ends its own record early; the rest lacks the secret marker, so it is skipped.)
    st.lists(
        st.tuples(hostile_text, hostile_text.filter(lambda c: not c.startswith("\n"))),
        min_size=1,
        max_size=4,
    ),
    st.randoms(use_true_random=False),
)
def test_queue_text_hostile_records_never_hide_or_change_good_ones(
    hostile: list[tuple[list[str], str, str]],
    good: list[tuple[str, str]],
    rnd: object,
) -> None:
    # Ids of the good records are ones no hostile record can claim (those start at 1).
    good_records = [(10**12 + i, "rx-" + name, comment) for i, (name, comment) in enumerate(good)]
    parts = [hostile_record(*h) for h in hostile] + [well_formed(*g) for g in good_records]
    rnd.shuffle(parts)  # type: ignore[attr-defined]
    text = "".join(parts)
    found = parse_queue_text(text, NONCE, name_prefix="rx-")
    check_bounded(found, len(parts))
    for job_id, name, comment in good_records:
        info = found[job_id]
        assert info.name == name
        assert info.comment == ("" if comment in {"N/A", "(null)"} else comment)
        assert info.state == "PENDING" and info.time_limit_min == 60


@FAST
@given(st.one_of(hostile_text, bytes_as_text, st.lists(hostile_text, max_size=16).map("|".join)))
def test_sacct_text_any_text_is_a_listing(text: str) -> None:
    found = parse_sacct_text(text)
    check_bounded(found, text.count("\n") + 1)


@FAST
@given(st.lists(st.lists(hostile_text, min_size=1, max_size=16), max_size=8))
def test_sacct_text_a_field_with_the_delimiter_is_skipped_never_misread(
    rows: list[list[str]],
) -> None:
    good = "|".join(
        ["77", "COMPLETED", "None", "rxbob", "rxtest", "cpu", "n3", "cpu=1", "cpu=1"]
        + ["UNLIMITED", "100", "101", "102", "0:0"]
    )
    assert len(good.split("|")) == len(SACCT_FIELDS)
    # Rows of any shape, none claiming the good line's id; a "|" or newline in a field makes
    # more fields or lines, and each of those is skipped or read on its own.
    lines = ["|".join(r) for r in rows if r[0].strip() != "77"]
    text = "\n".join([*lines, good]) + "\n"
    found = parse_sacct_text(text)
    check_bounded(found, text.count("\n"))
    assert (found[77].state, found[77].exit_code, found[77].user) == ("COMPLETED", 0, "rxbob")


@FAST
@given(hostile_text)
def test_time_limits_are_minutes_none_or_a_parse_error(text: str) -> None:
    try:
        minutes = parse_time_limit(text)
    except ParseError:
        return
    assert minutes is None or 0 <= minutes < 10**12


@FAST
@given(hostile_text)
def test_container_ids_from_any_comment_fit_sqlite(tail: str) -> None:
    config = Config()
    cid = container_id_from_comment(config, f"{config.slurm.tag}:container={tail}")
    assert cid is None or (0 <= cid < 10**18 and tail == str(cid).zfill(len(tail)))
