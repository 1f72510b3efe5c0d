"""One-shot commands (`rxctl run-once`) with a fake scheduler and clock (no root, no Slurm): who
may run one, what is submitted and as whom, the quota lease, every state the reconciler's pass
moves one through, its output's cleaning, the command reaching the script only as words, and the
client's following and exit status."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rxslurm.cli.commands_exec import SessionFailed
from rxslurm.cli.commands_run_once import exit_status, follow
from rxslurm.daemon.config import ApptainerConfig
from rxslurm.daemon.containers.job_follow import GONE_GRACE_S
from rxslurm.daemon.containers.job_logs import cleaning_of
from rxslurm.daemon.containers.one_shots import (
    JOB_PREFIX,
    OneShotService,
    check_command,
)
from rxslurm.daemon.errors import BadRequest, Conflict, Forbidden
from rxslurm.daemon.identity.actors import Actor
from rxslurm.daemon.ports import OneShotRequest
from rxslurm.daemon.runtime.apptainer import ApptainerRuntime
from rxslurm.daemon.runtime.job_output import JobOutput
from rxslurm.slurm.runas import RunAs
from tests.unit.test_image_build_service import VIEWER, add_member
from tests.unit.test_reconciler_edges import OWNER, RUNTIME_USER, World, world

MANAGER = Actor(platform_user="max", uid=65531, user="max", admin=False, origin="socket")
EDITOR = Actor(platform_user="eve", uid=65532, user="eve", admin=False, origin="socket")


class OneShots:
    """A OneShotService on a World, its job outputs and cleanings kept in memory."""

    def __init__(self, w: World) -> None:
        self.w = w
        self.service = OneShotService(w.service)
        self.outputs: dict[int, str] = {}
        self.cleaned: list[int] = []
        self.service.read_output = self._read
        self.service.clean_logs = lambda ledger, container_id, kept: self.cleaned.append(
            container_id
        )

    def _read(self, state_dir: str, job_id: int, as_user: RunAs | None, offset: Any = None,
              **_: Any) -> JobOutput:  # fmt: skip
        text = self.outputs.get(job_id, "")
        start = offset or 0
        return JobOutput(
            text[start:], start, len(text), len(text), missing=job_id not in self.outputs
        )

    def run(self, actor: Actor = OWNER, **body: Any) -> dict[str, Any]:
        return self.service.run(actor, "alpha", {"command": ["echo", "hi"], **body})

    def job(self, job_id: int, state: str, **values: Any) -> None:
        old = self.w.slurm.jobs[job_id]
        self.w.slurm.jobs[job_id] = replace(old, state=state, base_state=state, **values)

    def pass_(self) -> int:
        return self.service.reconcile()

    def row(self, one_shot_id: int) -> dict[str, Any]:
        return dict(self.w.ledger.db.table("one_shot_jobs").get(one_shot_id))

    def leases(self) -> int:
        return int(self.w.ledger.db.table("one_shot_leases").count)

    def events(self) -> list[str]:
        return [
            r["action"]
            for r in self.w.ledger.db.table("events").rows_where(order_by="id")
            if r["action"].startswith("run-once.")
        ]


@pytest.fixture
def o(tmp_path: Path) -> OneShots:
    return OneShots(world(tmp_path, ("alpha", "stopped")))


def test_a_one_shot_is_submitted_as_the_runtime_user_with_its_words_and_holds_a_lease(
    o: OneShots,
) -> None:
    answer = o.run(gpus=1, cpus=2, mem_mb=2048, time_limit_min=90, command=["python", "-c", "1"])

    assert answer["state"] == "queued" and answer["job_id"] == 1000
    ((_, spec, as_user),) = o.w.slurm.submitted
    assert as_user.user == RUNTIME_USER
    assert spec.name == f"{JOB_PREFIX}alpha-{answer['id']}" and spec.comment.endswith(
        f":once={answer['id']}"
    )
    assert (spec.partition, spec.cpus, spec.mem_mb, spec.gres, spec.time_limit_min) == (
        "cpu", 2, 2048, "gpu:1", 90
    )  # fmt: skip
    assert spec.requeue is False and spec.output == f"{o.row(answer['id'])['state_dir']}/job-%j.out"
    (request,) = o.w.runtime.one_shots
    # No snapshot taken yet: the bare image, the command as its words.
    assert request == OneShotRequest(
        image="/images/base.sif",
        snapshot="",
        workspace=request.workspace,
        command=("python", "-c", "1"),
        state_dir=o.row(answer["id"])["state_dir"],
        user=as_user,
        binds=(),
        gpus=1,
        gpu_driver="nvidia",  # the deployment's default: the project names none
        own_home_and_tmp=False,
    )
    lease = o.w.ledger.db.table("one_shot_leases").get(answer["id"])
    assert (lease["gpus"], lease["cpus"], lease["mem_mb"]) == (1, 2, 2048)
    assert o.events() == ["run-once.submitted"]
    detail = json.loads(
        next(o.w.ledger.db.table("events").rows_where("action = 'run-once.submitted'"))["detail"]
    )
    assert detail["argv"] == ["python", "-c", "1"] and detail["runtime_user"] == RUNTIME_USER


def test_managers_may_run_one_and_editors_and_viewers_may_not(o: OneShots) -> None:
    add_member(o.w, VIEWER, "viewer")
    add_member(o.w, EDITOR, "editor")
    add_member(o.w, MANAGER, "manager")
    for actor in (VIEWER, EDITOR):
        with pytest.raises(Forbidden, match="needs role owner or manager"):
            o.run(actor)
    assert o.w.slurm.submitted == [] and o.w.ledger.db.table("one_shot_jobs").count == 0
    assert o.run(MANAGER)["created_by"] == "max"


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ([], "non-empty list"),
        ("echo hi", "non-empty list"),
        (["echo", 3], "must be a text"),
        (["python", "-c", "import os\nprint(1)"], "holds a newline"),
        (["", "x"], "first word"),
        (["x"] * 1025, "more than 1024 words"),
    ],
)
def test_a_bad_command_is_refused_and_changes_nothing(o: OneShots, command: Any, why: str) -> None:
    with pytest.raises(BadRequest, match=why):
        o.run(command=command)
    assert o.w.slurm.submitted == [] and o.w.ledger.db.table("one_shot_jobs").count == 0


def test_bad_resources_are_refused(o: OneShots) -> None:
    for body, why in (
        ({"gpus": -1}, "gpus must be"),
        ({"cpus": True}, "cpus must be"),
        ({"partition": "a b"}, "partition may hold"),
    ):
        with pytest.raises(BadRequest, match=why):
            o.run(**body)
    assert o.w.slurm.submitted == []


def test_a_one_shot_that_does_not_fit_a_quota_is_refused_with_the_bottleneck(o: OneShots) -> None:
    with o.w.ledger.transaction() as db:
        db.table("quotas").insert(
            {"partition": "cpu", "scope": "deployment", "subject": "", "max_gpus": 2,
             "created_at": "x", "created_by": "op"}
        )  # fmt: skip
    o.run(gpus=2)
    why = "the command does not fit: partition cpu: deployment quota 2 GPUs, 2 in use by alpha"
    with pytest.raises(Conflict, match=why + " \\(2\\); this command needs 1") as refused:
        o.run(gpus=1)
    assert refused.value.code == "quota"
    assert len(o.w.slurm.submitted) == 1 and o.leases() == 1


def test_queued_running_then_the_commands_exit_code_and_the_lease_goes(o: OneShots) -> None:
    one_shot = o.run()["id"]
    job = o.row(one_shot)["job_id"]
    assert o.pass_() == 0 and o.row(one_shot)["state"] == "queued"
    o.w.slurm.run(job, "n2")
    assert o.pass_() == 1
    assert (o.row(one_shot)["state"], o.row(one_shot)["node"]) == ("running", "n2")
    assert o.leases() == 1
    o.job(job, "FAILED", exit_code=3)
    o.pass_()
    row = o.row(one_shot)
    assert (row["state"], row["exit_code"], row["reason"]) == ("exited", 3, None)
    assert o.leases() == 0
    assert o.events() == ["run-once.submitted", "run-once.started", "run-once.exited"]
    assert o.pass_() == 0  # ended: nothing more to follow


def test_a_job_gone_from_squeue_is_read_from_sacct(o: OneShots) -> None:
    one_shot = o.run()["id"]
    job = o.row(one_shot)["job_id"]
    o.job(job, "COMPLETED", exit_code=0)
    o.w.slurm.end(job, "COMPLETED", in_queue=False)
    o.w.slurm.finished[job] = replace(o.w.slurm.finished[job], exit_code=0)
    o.pass_()
    assert (o.row(one_shot)["state"], o.row(one_shot)["exit_code"]) == ("exited", 0)


def test_out_of_time_is_rx_slurms_failure_not_an_exit_code(o: OneShots) -> None:
    one_shot = o.run(time_limit_min=5)["id"]
    o.job(o.row(one_shot)["job_id"], "TIMEOUT", exit_code=0)
    o.pass_()
    row = o.row(one_shot)
    assert (row["state"], row["exit_code"]) == ("failed", None)
    assert row["reason"] == "the command ran out of its time limit (5 min; --time)"
    assert o.leases() == 0


def test_a_job_slurm_forgot_fails_after_the_grace(o: OneShots) -> None:
    one_shot = o.run()["id"]
    o.w.slurm.forget(o.row(one_shot)["job_id"])
    o.pass_()
    assert o.row(one_shot)["state"] == "queued"
    o.w.clock.advance(GONE_GRACE_S + 1)
    o.pass_()
    assert o.row(one_shot)["state"] == "failed" and o.leases() == 0


def test_a_failed_submission_ends_failed_and_frees_the_lease(o: OneShots) -> None:
    o.w.slurm.answering = False
    with pytest.raises(Exception, match="was not submitted"):
        o.run()
    (row,) = o.w.ledger.db.table("one_shot_jobs").rows
    assert row["state"] == "failed" and o.leases() == 0


def test_cancel_scancels_the_job_and_the_lease_goes(o: OneShots) -> None:
    one_shot = o.run()["id"]
    job = o.row(one_shot)["job_id"]
    o.w.slurm.run(job)
    answer = o.service.cancel(OWNER, "alpha", one_shot)
    assert answer["state"] == "cancelled" and answer["reason"] == "cancelled by ada"
    assert o.w.slurm.cancelled == [job] and o.leases() == 0
    with pytest.raises(Conflict, match="is cancelled, not running"):
        o.service.cancel(OWNER, "alpha", one_shot)
    add_member(o.w, VIEWER, "viewer")
    with pytest.raises(Forbidden):
        o.service.cancel(VIEWER, "alpha", one_shot)


def test_output_read_to_the_end_after_the_end_lets_its_file_go(o: OneShots) -> None:
    one_shot = o.run()["id"]
    job = o.row(one_shot)["job_id"]
    container = o.row(one_shot)["container_id"]
    o.outputs[job] = "hello\n"
    o.w.slurm.run(job)
    o.pass_()
    assert o.service.output(OWNER, "alpha", one_shot, 0)["text"] == "hello\n"
    assert o.cleaned == []  # still running: more may come
    # While it runs, the container's cleaning keeps its output even past the holder's jobs.
    o.w.add_job("alpha", "RUNNING")
    cleaning = cleaning_of(o.w.ledger, container, 10)
    assert cleaning is not None and job in cleaning.keep
    o.job(job, "COMPLETED", exit_code=0)
    o.pass_()
    last = o.service.output(OWNER, "alpha", one_shot, 6)
    assert (last["state"], last["exit_code"], last["text"]) == ("exited", 0, "")
    assert o.cleaned == [container] and o.row(one_shot)["output_read"] == 1
    cleaning = cleaning_of(o.w.ledger, container, 10)
    assert cleaning is not None and job not in cleaning.keep and cleaning.newest > job


# -- the command only as words -----------------------------------------------------------------

WORD = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\0"), max_size=20
)


@settings(max_examples=40, deadline=None)
@given(st.lists(WORD, min_size=1, max_size=6).filter(lambda words: words[0] != ""))
def test_the_command_reaches_apptainer_word_for_word(
    tmp_path_factory: Any, words: list[str]
) -> None:
    """oneshot.sh rendered with a stand-in Apptainer that prints its argv: the command's words
    come through literally, whatever shell syntax they hold, and nothing of them runs."""
    folder = tmp_path_factory.mktemp("oneshot")
    argv = run_stand_in(folder, tuple(words), ApptainerConfig(home="host", private_tmp=False))
    assert argv == [
        "--quiet", "exec", "--no-mount", "cwd", "--pwd", "/workspace", "-B", "/w:/workspace",
        "--overlay", "/s.img:ro", "/i.sif", *words,
    ]  # fmt: skip
    assert sorted(p.name for p in folder.iterdir()) == ["apptainer"]


def run_stand_in(folder: Path, words: tuple[str, ...], config: ApptainerConfig) -> list[str]:
    """oneshot.sh run by bash with a stand-in Apptainer that prints its argv and exits 3."""
    stand_in = folder / "apptainer"
    stand_in.write_text("#!/bin/sh\nfor a; do printf '%s\\0' \"$a\"; done\nexit 3\n")
    stand_in.chmod(0o755)
    runtime = ApptainerRuntime(replace(config, binary=str(stand_in)))
    script = runtime.one_shot_script(
        OneShotRequest(
            image="/i.sif", snapshot="/s.img", workspace="/w", command=words,
            state_dir=str(folder / "state"), user=RunAs.for_user("nobody"),
        )
    )  # fmt: skip
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, check=False, cwd=folder,
        env={"PATH": "/usr/bin:/bin", "TMPDIR": str(folder)},
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    return done.stdout.decode("utf-8", "surrogateescape").split("\0")[:-1]


def test_its_own_home_and_tmp_and_nothing_left_on_the_node(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    argv = run_stand_in(tmp_path, ("true",), ApptainerConfig())
    home = argv[argv.index("--home") + 1]
    assert home.startswith(f"{tmp_path}/state/home:") and (tmp_path / "state" / "home").is_dir()
    binds = [argv[i + 1] for i, a in enumerate(argv) if a == "-B"]
    private = [b for b in binds if b.endswith(":/tmp") or b.endswith(":/var/tmp")]
    assert len(private) == 2 and private[0].split(":")[0] == private[1].split(":")[0], binds
    assert private[0].startswith(f"{tmp_path}/rx-oneshot.")
    # Never --fakeroot: the snapshot is read-only and the command runs as the user.
    assert "--fakeroot" not in argv
    # Its folder on the node (Apptainer's records, its /tmp) went when it ended.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["apptainer", "state"]


def test_check_command_keeps_the_words() -> None:
    assert check_command(["sh", "-c", "echo $HOME; exit 3"]) == ("sh", "-c", "echo $HOME; exit 3")


# -- the client ------------------------------------------------------------------------------


def test_the_client_prints_every_piece_then_exits_with_the_commands_status() -> None:
    answers = [
        {"state": "queued", "job_id": None, "text": "", "end": 0, "size": 0},
        {"state": "running", "job_id": 7, "text": "a", "end": 1, "size": 1},
        {"state": "exited", "job_id": 7, "text": "bc", "end": 3, "size": 3, "exit_code": 3,
         "id": 1},
    ]  # fmt: skip
    asked: list[int] = []
    written: list[str] = []
    sleeps: list[float] = []

    def fetch(offset: int) -> dict[str, Any]:
        asked.append(offset)
        return answers.pop(0)

    last = follow(fetch, written.append, sleeps.append)
    assert "".join(written) == "abc" and asked == [0, 0, 1] and len(sleeps) == 2
    assert exit_status(last) == 3


def test_the_client_exits_125_with_the_reason_when_the_command_did_not_exit() -> None:
    with pytest.raises(SessionFailed, match="one-shot 4 failed: the command ran out") as failed:
        exit_status({"id": 4, "state": "failed", "reason": "the command ran out of memory"})
    assert failed.value.exit_code == 125


def test_a_disabled_container_runs_none_and_a_running_one_shot_keeps_its_project(
    o: OneShots,
) -> None:
    from rxslurm.daemon.projects.service import delete_project

    one_shot = o.run()["id"]
    o.w.set("alpha", state="disabled", desired="disabled")
    with pytest.raises(Conflict, match="is disabled; an owner runs `rxctl enable --project alpha`"):
        o.run()
    with pytest.raises(Conflict, match="1 one-shot command\\(s\\) running; let them end"):
        delete_project(o.w.ledger, OWNER, "alpha")
    o.job(o.row(one_shot)["job_id"], "COMPLETED", exit_code=0)
    o.pass_()
    delete_project(o.w.ledger, OWNER, "alpha")
    assert o.w.ledger.db.table("one_shot_jobs").count == 0


def test_the_newest_snapshot_is_mounted_read_only_and_gpus_bind_the_driver(
    tmp_path: Path,
) -> None:
    from tests.unit.test_batch_plan import add_snapshot

    o = OneShots(world(tmp_path, ("alpha", "stopped"), gpu_driver="nvidia"))
    add_snapshot(o.w, "/c/rx-alpha/snapshots/snap-1.img")
    add_snapshot(o.w, "/c/rx-alpha/snapshots/snap-2.img")
    o.run(gpus=1)
    o.run()
    with_gpu, without = o.w.runtime.one_shots
    assert with_gpu.snapshot == without.snapshot == "/c/rx-alpha/snapshots/snap-2.img"
    assert (with_gpu.gpus, with_gpu.gpu_driver, without.gpus) == (1, "nvidia", 0)
    script = ApptainerRuntime(ApptainerConfig(binary="/bin/apptainer")).one_shot_script(with_gpu)
    assert "gpu_flag=--nv\n" in script and "overlay=/c/rx-alpha/snapshots/snap-2.img\n" in script


def test_a_job_rxd_lost_between_sbatch_and_the_ledger_is_adopted_by_its_proof(
    o: OneShots,
) -> None:
    one_shot = o.run()["id"]
    job = o.row(one_shot)["job_id"]
    with o.w.ledger.transaction() as db:
        db.table("one_shot_jobs").update(one_shot, {"job_id": None})
    # Another user's job with the same name and comment proves nothing.
    o.w.slurm.jobs[job] = replace(o.w.slurm.jobs[job], user="mallory")
    o.pass_()
    assert o.row(one_shot)["job_id"] is None
    o.w.slurm.jobs[job] = replace(o.w.slurm.jobs[job], user=RUNTIME_USER)
    assert o.pass_() == 1 and o.row(one_shot)["job_id"] == job
