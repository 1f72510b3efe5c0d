"""The subject of a project or user quota: a name, matched in full, never control characters.

It is stored in the ledger, shown in `rxctl admin quota list` and, for a mirrored user quota,
written into sacctmgr's argv; the old check refused only characters below U+0020, so DEL, C1
controls, bidi overrides and names of any length got through. Fast tests: no root, no Slurm.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.daemon.errors import BadRequest
from rxslurm.daemon.quotas import leases as quotas
from rxslurm.daemon.text_checks import bad_character

PARTITIONS = {"gpu"}


def parse(scope: str, subject: object) -> dict:
    body = {"partition": "gpu", "scope": scope, "subject": subject, "max_gpus": 1}
    return quotas.parse_quota(body, PARTITIONS)


@pytest.mark.parametrize(
    "subject",
    ["alpha\n", "alpha\x7f", "al\x9bpha", "\u202ealpha", "a\u2028b", "Alpha", "-alpha", "a" * 22],
)
def test_a_project_subject_must_be_a_project_name(subject: str) -> None:
    with pytest.raises(BadRequest, match=r"^a project quota needs the project's name as subject: "):
        parse("project", subject)


@pytest.mark.parametrize(
    "subject",
    ["rxbob\n", "rx\x7fbob", "rx\x85bob", "\u202erxbob", "rx bob", "rx:bob", "../rxbob", "b" * 65],
)
def test_a_user_subject_must_be_a_user_name(subject: str) -> None:
    with pytest.raises(BadRequest, match=r"^a user quota needs the user's name as subject: "):
        parse("user", subject)


@pytest.mark.parametrize("subject", [None, "", 7, ["rxbob"]])
def test_a_subject_that_is_not_a_string_is_refused(subject: object) -> None:
    with pytest.raises(BadRequest, match=r"^a user quota needs the user's name as subject$"):
        parse("user", subject)


@pytest.mark.parametrize(
    ("scope", "subject"),
    [
        ("project", "alpha"),
        ("project", "a"),
        ("project", "ml-2"),
        ("user", "rxbob"),
        ("user", "alice@ad.example.org"),
        ("user", "svc_01.x-y"),
    ],
)
def test_names_are_accepted_as_they_are(scope: str, subject: str) -> None:
    assert parse(scope, subject)["subject"] == subject


@given(st.text(max_size=80))
def test_any_accepted_subject_is_plain_bounded_text(subject: str) -> None:
    for scope in ("project", "user"):
        try:
            got = parse(scope, subject)["subject"]
        except BadRequest as exc:
            assert "\n" not in exc.message
            continue
        assert got == subject and bad_character(got) is None and 0 < len(got) <= 64
        assert not any(ch.isspace() for ch in got)
