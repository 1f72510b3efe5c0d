"""A project's labels: names and values checked, the cap, set and remove in one change that is
audited, shown in status, filtered on in `rxctl list`; bad input changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.daemon.errors import BadRequest, Forbidden, NotFound
from rxslurm.daemon.identity.actors import Actor
from rxslurm.daemon.projects import labels
from rxslurm.daemon.projects.label_change import change_labels
from tests.unit.test_reconciler_edges import OWNER, world

STRANGER = Actor(platform_user="sam", uid=65532, user="sam", admin=False, origin="socket")


def test_labels_are_set_removed_shown_in_status_and_audited(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "sleeping"), ("beta", "sleeping"))

    answer = change_labels(w.ledger, OWNER, "alpha", {"set": {"keep": "true", "team": "cv"}})
    assert answer == {"name": "alpha", "labels": {"keep": "true", "team": "cv"}}
    answer = change_labels(w.ledger, OWNER, "alpha", {"set": {"team": "nlp"}, "remove": ["keep"]})
    assert answer["labels"] == {"team": "nlp"}

    assert w.service.status(OWNER, "alpha").to_dict()["labels"] == {"team": "nlp"}
    events = list(w.ledger.db.table("events").rows_where("action = 'project.labels'"))
    assert [json.loads(e["detail"])["after"] for e in events] == [
        {"keep": "true", "team": "cv"},
        {"team": "nlp"},
    ]


def test_list_filters_on_every_label_given(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "sleeping"), ("beta", "sleeping"))
    change_labels(w.ledger, OWNER, "alpha", {"set": {"team": "cv", "keep": "true"}})
    change_labels(w.ledger, OWNER, "beta", {"set": {"team": "cv"}})

    def listed(**wanted: str) -> list[str]:
        return [c["project"] for c in w.service.list_containers(OWNER, wanted)]

    assert listed() == ["alpha", "beta"]
    assert listed(team="cv") == ["alpha", "beta"]
    assert listed(team="cv", keep="true") == ["alpha"]
    assert listed(team="nlp") == []


@pytest.mark.parametrize(
    "body",
    [
        {"set": {"Bad": "x"}},
        {"set": {"1a": "x"}},
        {"set": {"a b": "x"}},
        {"set": {"team": "two words"}},
        {"set": {"team": "x" * 256}},
        {"set": {"keep": "yes"}},
        {"set": {"team": 3}},
        {"set": {"team": "a"}, "remove": ["team"]},
        {"set": ["team"]},
        {},
    ],
)
def test_bad_labels_are_refused_and_nothing_changes(tmp_path: Path, body: dict) -> None:  # type: ignore[type-arg]
    w = world(tmp_path, ("alpha", "sleeping"))
    change_labels(w.ledger, OWNER, "alpha", {"set": {"team": "cv"}})

    with pytest.raises(BadRequest):
        change_labels(w.ledger, OWNER, "alpha", body)

    assert w.service.status(OWNER, "alpha").to_dict()["labels"] == {"team": "cv"}


def test_a_project_holds_at_most_the_cap(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "sleeping"))
    many = {f"k{i}": "v" for i in range(labels.MAX_LABELS)}
    change_labels(w.ledger, OWNER, "alpha", {"set": many})
    with pytest.raises(BadRequest, match="at most"):
        change_labels(w.ledger, OWNER, "alpha", {"set": {"one-more": "v"}})
    # Replacing one is no new label.
    change_labels(w.ledger, OWNER, "alpha", {"set": {"k0": "w"}})


def test_only_members_who_edit_settings_label(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "sleeping"))
    with pytest.raises((NotFound, Forbidden)):
        change_labels(w.ledger, STRANGER, "alpha", {"set": {"keep": "true"}})


@given(st.text(max_size=80))
def test_parse_pair_accepts_exactly_what_check_key_and_check_value_accept(text: str) -> None:
    key, sep, value = text.partition("=")
    try:
        expected = (labels.check_key(key), labels.check_value(key, value)) if sep else None
    except BadRequest:
        expected = None
    if expected is None:
        with pytest.raises(BadRequest):
            labels.parse_pair(text)
    else:
        assert labels.parse_pair(text) == expected
