"""Old job logs cleaned: which files the cleaner removes (run here as the test's own user in a
temp folder), what it never touches (links, FIFOs, folders, other names, newer jobs), which jobs
the ledger keeps, when rxd cleans (a submission, a job's end) and what `rxctl logs` says of a
cleaned log."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.cli.commands_logs import cut_note
from rxslurm.daemon.config import Config, ConfigError, parse_config
from rxslurm.daemon.containers import job_logs
from rxslurm.daemon.containers.job_logs import (
    clean_job_logs,
    clean_job_logs_soon,
    container_logs,
    kept_jobs,
)
from rxslurm.daemon.runtime import user_script
from rxslurm.daemon.runtime.job_log_cleanup import (
    Cleaned,
    CleanupError,
    Others,
    parse_cleaner_output,
    remove_old_logs,
)
from rxslurm.daemon.runtime.job_output import JobOutput
from rxslurm.slurm.runas import RunAs
from tests.unit.test_reconciler_edges import OWNER, World, running, world


def logs_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".out"))


def make_logs(folder: Path, *job_ids: int) -> None:
    for job_id in job_ids:
        (folder / f"job-{job_id}.out").write_text(f"output of {job_id}\n")


# -- the cleaner -----------------------------------------------------------------------------


def test_the_cleaner_removes_the_logs_of_jobs_not_kept_and_nothing_else(tmp_path: Path) -> None:
    make_logs(tmp_path, *range(1, 16))
    others = ["job-3.status", "overlay.img", "job-x.out", "job-٣.out", "job-3.out.bak", "job-.out"]
    for name in others:
        (tmp_path / name).write_text("keep me\n")

    cleaned = remove_old_logs(str(tmp_path), set(range(6, 16)), 15, None)

    assert cleaned == Cleaned(removed=(1, 2, 3, 4, 5), skipped=())
    assert logs_in(tmp_path) == sorted(
        [f"job-{n}.out" for n in range(6, 16)] + ["job-.out", "job-x.out", "job-٣.out"]
    )
    assert all((tmp_path / name).read_text() == "keep me\n" for name in others)


def test_a_services_output_goes_with_its_jobs_log(tmp_path: Path) -> None:
    make_logs(tmp_path, 1, 2)
    for job_id in (1, 2):
        for suffix in ("service", "service.1", "service.dropped"):
            (tmp_path / f"job-{job_id}.{suffix}").write_text("served\n")
    (tmp_path / "job-1.service.2").write_text("not a log\n")

    cleaned = remove_old_logs(str(tmp_path), {2}, 2, None)

    assert cleaned.removed == (1,)  # one job, however many of its files went
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "job-1.service.2",
        "job-2.out",
        "job-2.service",
        "job-2.service.1",
        "job-2.service.dropped",
    ]


def test_a_log_newer_than_any_job_the_ledger_knows_is_kept(tmp_path: Path) -> None:
    # A job submitted this moment is in Slurm (and writing) before it is in the ledger.
    make_logs(tmp_path, 7, 8, 9)

    cleaned = remove_old_logs(str(tmp_path), {8}, 8, None)

    assert cleaned.removed == (7,)
    assert logs_in(tmp_path) == ["job-8.out", "job-9.out"]


def test_a_symlink_named_like_an_old_log_is_neither_followed_nor_removed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("the runtime user's private key\n")
    (tmp_path / "job-2.out").symlink_to(secret)
    dangling = tmp_path / "job-3.out"
    dangling.symlink_to(tmp_path / "nowhere")
    make_logs(tmp_path, 1, 9)

    cleaned = remove_old_logs(str(tmp_path), {9}, 9, None)

    assert cleaned == Cleaned(removed=(1,), skipped=("job-2.out", "job-3.out"))
    assert (tmp_path / "job-2.out").is_symlink() and dangling.is_symlink()
    assert secret.read_text() == "the runtime user's private key\n"


def test_a_fifo_or_a_folder_named_like_an_old_log_is_left_alone_without_blocking(
    tmp_path: Path,
) -> None:
    os.mkfifo(tmp_path / "job-4.out")
    (tmp_path / "job-5.out").mkdir()
    (tmp_path / "job-5.out" / "inside").write_text("x")
    make_logs(tmp_path, 9)

    cleaned = remove_old_logs(str(tmp_path), {9}, 9, None, timeout=5)

    assert cleaned == Cleaned(removed=(), skipped=("job-4.out", "job-5.out"))
    assert (tmp_path / "job-5.out" / "inside").exists()


def test_a_symlinked_state_folder_is_not_followed(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    make_logs(real, 1, 2)
    (tmp_path / "state").symlink_to(real)

    with pytest.raises(CleanupError, match="its folder"):
        remove_old_logs(str(tmp_path / "state"), {2}, 2, None)
    assert logs_in(real) == ["job-1.out", "job-2.out"]


def test_the_cleaner_runs_isolated_as_the_runtime_user(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[list[str], Any]] = []

    def fake_run(argv: list[str], as_user: Any, timeout: float) -> Any:
        calls.append((argv, as_user))
        return subprocess.CompletedProcess(argv, 0, '{"removed": [3], "skipped": []}\n', "")

    monkeypatch.setattr(user_script, "run", fake_run)
    who = RunAs("ada", 65534, 65534, (65534,))

    assert remove_old_logs("/state/rx-a", {12, 11}, 12, who).removed == (3,)

    ((argv, as_user),) = calls
    assert as_user is who
    assert argv[:4] == [sys.executable, "-I", "-S", "-c"]
    assert argv[5:] == ["/state/rx-a", "11,12", "12"]


@given(st.integers(-3, 3), st.text(max_size=60), st.text(max_size=20))
def test_any_cleaner_answer_is_a_result_or_a_cleanup_error(code: int, out: str, err: str) -> None:
    try:
        result = parse_cleaner_output(code, out, err)
    except CleanupError:
        return
    assert all(isinstance(j, int) for j in result.removed)
    assert all(isinstance(n, str) for n in result.skipped)


def test_a_malformed_cleaner_answer_is_an_error() -> None:
    with pytest.raises(CleanupError, match="malformed"):
        parse_cleaner_output(0, '{"removed": ["../x"], "skipped": []}\n')
    with pytest.raises(CleanupError, match="exit 1"):
        parse_cleaner_output(1, "")


# -- which jobs the ledger keeps, and when rxd cleans -----------------------------------------


def jobs_of(w: World, project: str, count: int, state: str = "COMPLETED") -> list[int]:
    ids = [w.add_job(project, state) for _ in range(count)]
    w.set(project, job_id=None, state="stopped")
    return ids


def test_the_newest_jobs_and_the_current_one_are_kept(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"), ("beta", "stopped"))
    ids = jobs_of(w, "alpha", 5)
    jobs_of(w, "beta", 3)  # newer ids, another container's
    alpha = w.row("alpha")["id"]

    with w.ledger.read() as db:
        assert kept_jobs(db, alpha, 2) == set(ids[-2:])
    w.set("alpha", job_id=ids[0], state="running")  # a current job is always kept
    with w.ledger.read() as db:
        assert kept_jobs(db, alpha, 2) == {ids[0], *ids[-2:]}


def test_cleaning_a_container_keeps_what_the_ledger_says_as_its_runtime_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    ids = jobs_of(w, "alpha", 12)
    asked: list[tuple[Any, ...]] = []

    def fake(state_dir: str, keep: set[int], newest: int, who: RunAs, others: Others) -> Cleaned:
        asked.append((state_dir, keep, newest, who.user, others.keep_exec))
        return Cleaned((ids[0], ids[1]), ())

    monkeypatch.setattr(job_logs, "remove_old_logs", fake)

    assert clean_job_logs(w.ledger, w.row("alpha")["id"], 10) == Cleaned((ids[0], ids[1]), ())
    assert asked == [(str(tmp_path), set(ids[2:]), ids[-1], "nobody", frozenset())]


def test_a_container_without_jobs_or_folder_is_not_cleaned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world(tmp_path, ("alpha", "stopped"), ("beta", "stopped"))
    jobs_of(w, "beta", 2)
    w.set("beta", state_dir=None)
    monkeypatch.setattr(job_logs, "remove_old_logs", lambda *a: pytest.fail("cleaned"))

    assert clean_job_logs(w.ledger, w.row("alpha")["id"], 10) is None
    assert clean_job_logs(w.ledger, w.row("beta")["id"], 10) is None


def test_a_cleaning_that_fails_is_logged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    jobs_of(w, "alpha", 2)

    def refuse(*args: Any, **kwargs: Any) -> Cleaned:
        raise CleanupError("cannot clean job logs: its folder: Permission denied")

    monkeypatch.setattr(job_logs, "remove_old_logs", refuse)
    with caplog.at_level(logging.WARNING, logger=job_logs.__name__):
        future = clean_job_logs_soon(w.ledger, w.row("alpha")["id"], 10)
        assert future is not None
        future.result(timeout=30)

    assert [r.getMessage() for r in caplog.records] == ["job logs not cleaned"]


def test_a_ledger_that_cannot_be_read_for_cleaning_fails_nothing_else(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    alpha = w.row("alpha")["id"]

    with w.ledger.transaction(), caplog.at_level(logging.ERROR, logger=job_logs.__name__):
        # A read inside an open transaction is refused: as any failure of the read would be.
        assert clean_job_logs_soon(w.ledger, alpha, 10) is None

    assert [r.getMessage() for r in caplog.records] == ["job logs not cleaned"]


def test_a_job_that_ends_cleans_its_containers_logs(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    cleaned: list[int] = []
    w.service.clean_job_logs = cleaned.append
    job_id = running(w, "alpha")
    assert cleaned == []  # starting and running end no job

    w.slurm.end(job_id, "COMPLETED")
    w.reconcile()

    assert w.state("alpha") == "stopped" and cleaned == [w.row("alpha")["id"]]


def test_a_submission_cleans_too_once_its_job_is_in_the_ledger(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    alpha = w.row("alpha")["id"]
    seen: list[tuple[int, int | None]] = []
    w.service.clean_job_logs = lambda cid: seen.append((cid, w.row("alpha")["job_id"]))
    job_id = running(w, "alpha")
    w.slurm.end(job_id, "TIMEOUT")  # the time limit: the job ends, a new one is submitted

    w.reconcile()

    new_job = w.row("alpha")["job_id"]
    assert new_job not in (None, job_id)
    assert seen == [(alpha, None), (alpha, new_job)]


def test_the_service_cleans_with_the_configured_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(
        "rxslurm.daemon.containers.service.clean_job_logs_soon",
        lambda ledger, cid, kept: calls.append((cid, kept)),
    )
    from rxslurm.daemon.containers.service import ContainerService

    service = ContainerService(
        w.ledger, parse_config({"containers": {"job_logs_kept": 3}}), w.slurm
    )
    service.clean_job_logs(w.row("alpha")["id"])

    assert calls == [(w.row("alpha")["id"], 3)]


# -- what rxctl logs says ---------------------------------------------------------------------


def test_a_cleaned_log_is_said_to_be_cleaned_and_a_kept_one_only_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    ids = jobs_of(w, "alpha", 4)
    missing = JobOutput("", 0, 0, 0, missing=True)
    monkeypatch.setattr(job_logs, "read_output", lambda *a, **k: missing)

    old = container_logs(w.ledger, OWNER, "alpha", job_id=ids[0], kept=2)
    new = container_logs(w.ledger, OWNER, "alpha", job_id=ids[-1], kept=2)

    assert old["cleaned"] is True and new["cleaned"] is False
    assert [(j["job_id"], j["kept"]) for j in old["jobs"]] == [
        (ids[3], True),
        (ids[2], True),
        (ids[1], False),
        (ids[0], False),
    ]
    assert cut_note(old) == (
        f"job {ids[0]}'s output was cleaned: rxd keeps only the container's newest jobs' logs"
    )
    assert cut_note(new) == f"job {ids[-1]} left no output"


def test_an_old_log_not_yet_cleaned_is_still_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    ids = jobs_of(w, "alpha", 3)
    monkeypatch.setattr(job_logs, "read_output", lambda *a, **k: JobOutput("hi\n", 0, 3, 3))

    answer = container_logs(w.ledger, OWNER, "alpha", job_id=ids[0], kept=1)

    assert answer["text"] == "hi\n" and answer["cleaned"] is False


# -- the setting ------------------------------------------------------------------------------


def test_job_logs_kept_defaults_to_ten_and_must_be_at_least_one() -> None:
    assert Config().containers.job_logs_kept == 10
    assert parse_config({"containers": {"job_logs_kept": 1}}).containers.job_logs_kept == 1
    for bad in (0, -5):
        with pytest.raises(ConfigError, match="containers.job_logs_kept must be at least 1"):
            parse_config({"containers": {"job_logs_kept": bad}})
