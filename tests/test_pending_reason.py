"""Slurm's pending reasons in words (rxslurm/slurm/job_states.py)."""

from rxslurm.slurm.job_states import pending_reason


def test_a_reason_is_put_in_words_and_quoted() -> None:
    assert pending_reason("Resources") == (
        "waiting for free resources on the partition (Slurm: Resources)"
    )
    assert pending_reason("QOSGrpCpuLimit") == "a Slurm limit is reached (Slurm: QOSGrpCpuLimit)"
    assert pending_reason("Licenses") == "Slurm: Licenses"
    assert pending_reason("") == "Slurm: pending"


def test_slurms_none_is_not_quoted() -> None:
    # It read "about to be scheduled (Slurm: None)", as if something were missing.
    assert pending_reason("None") == "about to be scheduled"
