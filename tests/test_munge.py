"""The libmunge binding against real munged daemons (the cluster's, and one with another key).

Fast tests (no Slurm), but they need the cluster's munged running; the wrong-key test also needs
root to start a second munged of its own under /var/tmp.
"""

from __future__ import annotations

import time

import pytest

from rxslurm.slurm import munge
from tests.support.cluster import wait_for
from tests.support.munge import needs_munged, other_munged  # noqa: F401

pytestmark = needs_munged


def test_a_credential_carries_its_payload_and_proves_who_encoded_it() -> None:
    import os

    decoded = munge.decode(munge.encode(b"payload \x00 with a NUL"))
    assert decoded.payload == b"payload \x00 with a NUL"
    assert (decoded.uid, decoded.gid) == (os.getuid(), os.getgid())
    assert decoded.ttl > 0
    assert abs(decoded.encoded_at - time.time()) < 600


def test_an_empty_payload_decodes_to_empty_bytes() -> None:
    assert munge.decode(munge.encode()).payload == b""


def test_a_credential_decodes_once_and_a_replay_still_says_whose_it_was() -> None:
    import os

    credential = munge.encode(b"once")
    munge.decode(credential)
    with pytest.raises(munge.MungeError) as caught:
        munge.decode(credential)
    assert caught.value.err is munge.Err.CRED_REPLAYED
    assert caught.value.message == "Replayed credential"
    assert caught.value.credential_fault
    assert caught.value.uid == os.getuid()


def test_a_credential_past_its_ttl_is_expired() -> None:
    credential = munge.encode(b"short", ttl=1)
    deadline = time.time() + 2.5
    # Waiting for the clock is the point of this test; poll it rather than sleep a fixed time.
    wait_for(lambda: time.time() > deadline, timeout=10, interval=0.1, what="the TTL to pass")
    with pytest.raises(munge.MungeError) as caught:
        munge.decode(credential)
    assert caught.value.err is munge.Err.CRED_EXPIRED


@pytest.mark.parametrize(
    "forged", ["MUNGE:garbage:", "MUNGE:" + "A" * 120 + ":", "not a credential", "x" * 20000, ""]
)
def test_forged_credentials_are_refused_with_a_reason(forged: str) -> None:
    with pytest.raises(munge.MungeError) as caught:
        munge.decode(forged)
    assert caught.value.credential_fault, caught.value
    assert caught.value.message and "\n" not in caught.value.message
    assert caught.value.uid is None


def test_a_tampered_credential_is_refused() -> None:
    credential = munge.encode(b"intact")
    body = credential[len("MUNGE:") : -1]
    flipped = body[:40] + ("A" if body[40] != "A" else "B") + body[41:]
    with pytest.raises(munge.MungeError) as caught:
        munge.decode(f"MUNGE:{flipped}:")
    assert caught.value.credential_fault


def test_a_credential_of_another_munge_key_is_invalid(other_munged: str) -> None:  # noqa: F811
    credential = munge.encode(b"elsewhere", socket=other_munged)
    assert munge.decode(credential, socket=other_munged).payload == b"elsewhere"
    stranger = munge.encode(b"elsewhere", socket=other_munged)
    with pytest.raises(munge.MungeError) as caught:
        munge.decode(stranger)
    assert caught.value.err is munge.Err.CRED_INVALID


def test_no_munged_is_unavailable_not_a_bad_credential(tmp_path) -> None:
    with pytest.raises(munge.MungeUnavailable) as caught:
        munge.encode(b"x", socket=str(tmp_path / "absent.sock"))
    assert caught.value.err is munge.Err.SOCKET
    assert not caught.value.credential_fault
    assert "absent.sock" in caught.value.message
