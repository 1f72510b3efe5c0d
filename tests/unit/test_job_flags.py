"""sbatch's --account, --qos, --constraint and --reservation as project settings: checked as
Slurm's names, each one argv item of the holder job's sbatch, shown in the status, and Slurm's
refusal as the container's reason in one line."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.daemon.errors import BadRequest, Conflict
from rxslurm.daemon.settings import Settings, check_static, differs_from_snapshot
from rxslurm.protocol.settings import BY_NAME, JOB_FLAGS
from rxslurm.slurm.adapter import JobSpec
from rxslurm.slurm.errors import SlurmRejected
from tests.unit.test_reconciler_edges import OWNER, world

FLAGS = {"account": "lab-a", "qos": "high", "constraint": "a100&[ib|eth]", "reservation": "maint_1"}


def submitted_options(w: object) -> list[str]:
    (_, spec, _) = w.slurm.submitted[-1]  # type: ignore[attr-defined]
    return spec.sbatch_options()


def test_the_holder_job_gets_each_flag_as_one_argv_item(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"), **FLAGS)

    view = w.service.wake(OWNER, "alpha")

    options = submitted_options(w)
    for flag, value in FLAGS.items():
        assert options.count(f"--{flag}={value}") == 1, options
    assert {flag: getattr(view, flag) for flag in JOB_FLAGS} == FLAGS
    assert {flag: view.to_dict()[flag] for flag in JOB_FLAGS} == FLAGS


def test_without_flags_the_job_has_none_of_them(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"))

    view = w.service.wake(OWNER, "alpha")

    options = submitted_options(w)
    assert not [o for o in options if o.split("=")[0] in {f"--{f}" for f in JOB_FLAGS}], options
    assert [getattr(view, flag) for flag in JOB_FLAGS] == [None] * 4


def test_the_deployments_default_account_applies_and_a_projects_own_wins(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"), ("beta", "stopped"))
    config = w.service.config
    w.service.config = replace(config, defaults=replace(config.defaults, account="site"))
    with w.ledger.transaction() as db:
        db.execute("UPDATE projects SET account = 'lab-b' WHERE name = 'beta'")

    w.service.wake(OWNER, "alpha")
    assert "--account=site" in submitted_options(w)
    w.service.wake(OWNER, "beta")
    assert "--account=lab-b" in submitted_options(w)


def test_slurms_refusal_is_the_containers_reason_in_one_line(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"), account="nosuch")

    def refuse(*_: object) -> int:
        raise SlurmRejected(
            "Batch job submission failed: Invalid account or account/partition combination "
            "specified\nand a second line"
        )

    w.slurm.submit = refuse  # type: ignore[method-assign]

    with pytest.raises(Conflict) as refused:
        w.service.wake(OWNER, "alpha")
    one_line = (
        "Batch job submission failed: Invalid account or account/partition combination "
        "specified; and a second line"
    )
    assert str(refused.value) == f"Slurm refused the job: {one_line}"
    row = w.row("alpha")
    assert (row["state"], row["reason"], row["last_error"]) == (
        "error",
        f"Slurm refused the job: {one_line}",
        one_line,
    )
    assert w.lease_holders() == []


def test_a_job_started_before_the_flags_existed_has_no_settings_pending() -> None:
    # The snapshot of a job an older rxd started names none of the new settings.
    old = {name: value for name, value in Settings().to_dict().items() if name not in JOB_FLAGS}
    assert not differs_from_snapshot(Settings(), old)
    assert differs_from_snapshot(Settings(qos="high"), old)


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("account", "a b"),
        ("account", "uid=0"),
        ("qos", "high;rm"),
        ("reservation", "r/1"),
        ("reservation", "é"),
        ("constraint", "a100 ib"),
        ("constraint", "a100&$(id)"),
    ],
)
def test_a_value_slurm_would_not_take_as_a_name_is_a_400(flag: str, value: str) -> None:
    with pytest.raises(BadRequest, match=f"^{flag} may hold "):
        check_static(Settings(**{flag: value}))


@pytest.mark.parametrize(("flag", "cap"), [("qos", 64), ("constraint", 256)])
def test_a_value_longer_than_its_cap_is_a_400(flag: str, cap: int) -> None:
    with pytest.raises(BadRequest, match=f"^{flag} is too long"):
        check_static(Settings(**{flag: "x" * (cap + 1)}))


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("account", "lab_a.1-x"),
        ("qos", "normal"),
        ("reservation", "root_12"),
        ("constraint", "a100&ib"),
        ("constraint", "[rack1|rack2]*2,gpu:a100"),
        ("account", ""),
    ],
)
def test_slurms_names_and_feature_expressions_are_taken(flag: str, value: str) -> None:
    check_static(Settings(**{flag: value}))


_ALPHABET = st.characters(codec="ascii") | st.sampled_from("é\u202e\n\0")


@given(st.sampled_from(JOB_FLAGS), st.text(_ALPHABET, max_size=80))
def test_what_rxd_accepts_the_adapter_passes_as_exactly_one_option(flag: str, value: str) -> None:
    try:
        check_static(Settings(**{flag: value}))
    except BadRequest:
        return
    spec = JobSpec(name="rx-alpha", **{flag: value or None})  # type: ignore[arg-type]
    options = spec.sbatch_options()
    mine = [o for o in options if o.startswith(f"--{flag}=")]
    assert mine == ([f"--{flag}={value}"] if value else [])
    assert len(value.encode()) <= BY_NAME[flag].max_bytes


@pytest.mark.parametrize("flag", JOB_FLAGS)
def test_the_adapter_refuses_what_is_no_slurm_name_even_if_it_got_that_far(flag: str) -> None:
    with pytest.raises(ValueError, match=f"invalid {flag}"):
        JobSpec(name="rx-alpha", **{flag: "a b"})  # type: ignore[arg-type]
