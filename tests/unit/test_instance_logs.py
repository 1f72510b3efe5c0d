"""Apptainer's instance logs and detached commands' output, tidied like the job logs: the cleaner
(run here as the test's own user in a temp folder) removes those of jobs and commands not kept,
cuts a kept instance log over the cap to its newest half in place (an appending writer goes on
after it), never touches links or other names; the reader finds an instance log under any host
folder; `rxctl logs --instance` reads it; the reconciler tidies a running container's logs
every TIDY_EVERY_S."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from rxslurm.cli.commands_logs import cut_note, logs_route
from rxslurm.daemon.containers import job_logs
from rxslurm.daemon.containers.job_logs import cleaning_of, container_logs, instance_log_name
from rxslurm.daemon.containers.reconciler import TIDY_EVERY_S
from rxslurm.daemon.errors import BadRequest
from rxslurm.daemon.runtime.job_log_cleanup import Others, cleaner_argv, remove_old_logs
from rxslurm.daemon.runtime.job_output import OutputError, read_output
from tests.unit.test_reconciler_edges import OWNER, running, world

USER = "rxalice"


def instance_logs(state: Path, host: str = "vm") -> Path:
    folder = state / "apptainer" / "instances" / "logs" / host / USER
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write(path: Path, text: str, age_s: float = 0) -> None:
    path.write_text(text)
    if age_s:
        when = time.time() - age_s
        os.utime(path, (when, when))


def test_instance_logs_of_jobs_not_kept_go_and_the_rest_stay(tmp_path: Path) -> None:
    logs = instance_logs(tmp_path)
    for job in (5, 6, 7, 9):
        for stream in ("out", "err"):
            write(logs / f"rx-alpha-{job}.{stream}", f"{job}\n")
    (logs / "rx-alpha-5.notes").write_text("not a log\n")
    (logs / "rx-alpha-6.out.bak").write_text("not a log\n")

    cleaned = remove_old_logs(str(tmp_path), {7}, 8, None, others=Others(frozenset(), 0.0))

    assert sorted(cleaned.instance_logs) == [
        "rx-alpha-5.err",
        "rx-alpha-5.out",
        "rx-alpha-6.err",
        "rx-alpha-6.out",
    ]
    # Kept: job 7, job 9 (newer than any rxd knows), and other names.
    assert sorted(p.name for p in logs.iterdir()) == [
        "rx-alpha-5.notes",
        "rx-alpha-6.out.bak",
        "rx-alpha-7.err",
        "rx-alpha-7.out",
        "rx-alpha-9.err",
        "rx-alpha-9.out",
    ]


def test_links_in_the_instance_log_folders_are_neither_followed_nor_removed(
    tmp_path: Path,
) -> None:
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    instance_logs(elsewhere)
    write(instance_logs(elsewhere) / "rx-alpha-1.out", "not yours\n")
    (tmp_path / "apptainer").symlink_to(elsewhere / "apptainer")
    link_target = tmp_path / "target"
    link_target.write_text("keep\n")

    cleaned = remove_old_logs(str(tmp_path), set(), 8, None, others=Others(frozenset(), 0.0))

    assert cleaned.instance_logs == ()
    assert (instance_logs(elsewhere) / "rx-alpha-1.out").read_text() == "not yours\n"
    (tmp_path / "apptainer").unlink()
    logs = instance_logs(tmp_path)
    (logs / "rx-alpha-2.out").symlink_to(link_target)
    cleaned = remove_old_logs(str(tmp_path), set(), 8, None, others=Others(frozenset(), 0.0))
    assert cleaned.skipped == ("rx-alpha-2.out",) and link_target.read_text() == "keep\n"


def test_a_kept_instance_log_over_the_cap_keeps_its_newest_half_and_appending_goes_on(
    tmp_path: Path,
) -> None:
    log = instance_logs(tmp_path) / "rx-alpha-7.err"
    writer = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(writer, b"".join(b"%09d\n" % i for i in range(100)))  # 1000 bytes

        cleaned = remove_old_logs(
            str(tmp_path), {7}, 8, None, others=Others(frozenset(), 0.0, cap=400)
        )
        os.write(writer, b"after the cut\n")
    finally:
        os.close(writer)

    assert cleaned.trimmed == ("rx-alpha-7.err",)
    text = log.read_bytes()
    assert text == b"".join(b"%09d\n" % i for i in range(80, 100)) + b"after the cut\n"


def test_detached_commands_output_goes_when_not_kept_and_written_before_the_ledger_was_read(
    tmp_path: Path,
) -> None:
    write(tmp_path / "exec-0000000a.out", "old\n", age_s=3600)
    write(tmp_path / "exec-0000000a.out.1", "older\n", age_s=3600)
    write(tmp_path / "exec-0000000b.out", "kept\n", age_s=3600)
    write(tmp_path / "exec-0000000c.out", "started after the read\n")
    write(tmp_path / "exec-0000000d.bak", "other name\n", age_s=3600)
    (tmp_path / "exec-0000000e.out").symlink_to(tmp_path / "exec-0000000b.out")

    cleaned = remove_old_logs(
        str(tmp_path),
        set(),
        1,
        None,
        others=Others(frozenset({"0000000b"}), time.time() - 60),
    )

    assert cleaned.exec_logs == ("exec-0000000a.out", "exec-0000000a.out.1")
    assert "exec-0000000e.out" in cleaned.skipped
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "exec-0000000b.out",
        "exec-0000000c.out",
        "exec-0000000d.bak",
        "exec-0000000e.out",
    ]


def test_the_cleaners_arguments_are_data_and_bad_command_ids_are_refused() -> None:
    argv = cleaner_argv("/s", {3, 1}, 4, Others(frozenset({"0000000b"}), 12.5, cap=10))
    assert argv[5:] == ["/s", "1,3", "4", "0000000b", "12.5", "10"]
    with pytest.raises(ValueError):
        cleaner_argv("/s", set(), 4, Others(frozenset({"../x"}), 0.0))


def test_the_ledger_keeps_running_commands_and_those_of_kept_jobs(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    cid, pid = w.row("alpha")["id"], w.row("alpha")["project_id"]
    with w.ledger.transaction() as db:
        for command, state, job in (
            ("0000000a", "ended", job_id),
            ("0000000b", "running", 1),
            ("0000000c", "ended", 1),
        ):
            db.table("exec_sessions").insert(
                {
                    "id": command,
                    "container_id": cid,
                    "project_id": pid,
                    "job_id": job,
                    "step_name": "rx-exec-x",
                    "argv": "[]",
                    "started_by": "ada",
                    "started_at": "2026-01-01T00:00:00Z",
                    "state": state,
                }
            )
    before = time.time()

    cleaning = cleaning_of(w.ledger, cid, 10)

    assert cleaning is not None
    assert cleaning.keep_exec == {"0000000a", "0000000b"}
    assert before <= cleaning.read_at <= time.time()


def test_the_reader_finds_an_instance_log_under_whichever_host_folder_holds_it(
    tmp_path: Path,
) -> None:
    instance_logs(tmp_path, "a-host")
    write(instance_logs(tmp_path, "n2") / "rx-alpha-7.err", "FATAL: it broke\n")

    name = instance_log_name("rx-alpha", USER, 7, "err")
    piece = read_output(str(tmp_path), 7, None, name=name)
    gone = read_output(str(tmp_path), 8, None, name=instance_log_name("rx-alpha", USER, 8, "err"))

    assert piece.text == "FATAL: it broke\n"
    assert gone.missing


def test_the_reader_goes_down_no_link(tmp_path: Path) -> None:
    elsewhere = tmp_path.parent / f"{tmp_path.name}-away"
    write(instance_logs(elsewhere, "vm") / "rx-alpha-7.err", "secret\n")
    (tmp_path / "apptainer").symlink_to(elsewhere / "apptainer")

    with pytest.raises(OutputError, match="apptainer is a symbolic link"):
        read_output(str(tmp_path), 7, None, name=instance_log_name("rx-alpha", USER, 7, "err"))


def test_logs_instance_reads_the_jobs_instance_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    folder = tmp_path / "apptainer" / "instances" / "logs" / "vm" / "nobody"
    folder.mkdir(parents=True)
    write(folder / f"rx-alpha-{job_id}.out", "the instance said hello\n")
    asked: list[Any] = []

    def as_this_process(state_dir: str, job: int, who: Any, **kw: Any) -> Any:
        asked.append(kw["name"])
        return read_output(state_dir, job, None, **kw)

    monkeypatch.setattr(job_logs, "read_output", as_this_process)

    answer = container_logs(w.ledger, OWNER, "alpha", instance="out")

    assert answer["text"] == "the instance said hello\n" and answer["instance"] == "out"
    assert asked == [f"apptainer/instances/logs/*/nobody/rx-alpha-{job_id}.out"]
    with pytest.raises(BadRequest):
        container_logs(w.ledger, OWNER, "alpha", instance="../../x")


def test_the_cli_asks_for_the_instance_log_and_says_when_there_is_none() -> None:
    assert logs_route("alpha", None, 10, "err") == "/v1/projects/alpha/logs?offset=10&instance=err"
    note = cut_note({"job_id": 7, "instance": "err", "missing": True, "cleaned": False, "start": 0})
    assert note == "job 7's instance log (err) is empty or absent"


def test_a_running_containers_logs_are_tidied_every_period(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    running(w, "alpha")
    tidied: list[int] = []
    w.service.clean_job_logs = tidied.append

    w.reconcile()
    w.clock.advance(TIDY_EVERY_S - 1)
    w.reconcile()
    assert tidied == []

    w.clock.advance(2)
    w.reconcile()
    w.reconcile()

    assert tidied == [w.row("alpha")["id"]]


def test_the_answer_of_the_cleaner_lists_what_it_did(tmp_path: Path) -> None:
    write(instance_logs(tmp_path) / "rx-alpha-1.out", "x\n")
    cleaned = remove_old_logs(str(tmp_path), set(), 2, None, others=Others(frozenset(), 0.0))
    assert json.loads(json.dumps(cleaned.instance_logs)) == ["rx-alpha-1.out"]
