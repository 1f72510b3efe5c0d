"""Image builds with a fake scheduler and clock (no root, no Slurm): the gates, what is submitted
and as whom, the quota lease, and every state the reconciler's pass moves a build through."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from rxslurm.daemon.config import BuildsConfig, Config
from rxslurm.daemon.containers.builds import BuildService
from rxslurm.daemon.containers.job_follow import GONE_GRACE_S, SUBMIT_GRACE_S
from rxslurm.daemon.errors import BadRequest, Conflict, Forbidden, NotFound
from rxslurm.daemon.identity.actors import Actor
from rxslurm.daemon.images.builds import BUILD_JOB_PREFIX
from rxslurm.daemon.runtime.job_output import JobOutput
from rxslurm.slurm.jobs import JobInfo
from rxslurm.slurm.runas import RunAs
from tests.unit.test_reconciler_edges import OWNER, RUNTIME_USER, World, world

DEFINITION = "Bootstrap: localimage\nFrom: /images/base.sif\n\n%post\n    echo hi\n    false\n"
VIEWER = Actor(platform_user="vic", uid=65533, user="vic", admin=False, origin="socket")
EDITOR = Actor(platform_user="eve", uid=65532, user="eve", admin=False, origin="socket")
SHA = "ab" * 32


class Builds:
    """A BuildService on a World, its build folders and job outputs kept in memory."""

    def __init__(self, w: World, **builds: Any) -> None:
        self.w = w
        config = replace(w.service.config, builds=BuildsConfig(enabled=True, **builds))
        w.service.config = config
        self.service = BuildService(w.service)
        self.folders: list[tuple[str, RunAs]] = []
        self.outputs: dict[int, str] = {}
        self.read_as: list[RunAs | None] = []
        self.service.make_build_dir = lambda name, owner: self.folders.append((name, owner))
        self.service.read_output = self._read

    def _read(self, state_dir: str, job_id: int, as_user: RunAs | None, offset: Any = None,
              **_: Any) -> JobOutput:  # fmt: skip
        self.read_as.append(as_user)
        text = self.outputs.get(job_id, "")
        return JobOutput(text, 0, len(text), len(text), missing=job_id not in self.outputs)

    def draft(self, name: str = "main", text: str = DEFINITION, kind: str = "definition") -> None:
        self.service.create_draft(OWNER, "alpha", {"name": name, "kind": kind, "text": text})

    def build(self, actor: Actor = OWNER, **body: Any) -> dict[str, Any]:
        return self.service.build(actor, "alpha", {"draft": "main", **body})

    def job(self, job_id: int, state: str, **values: Any) -> None:
        old = self.w.slurm.jobs[job_id]
        self.w.slurm.jobs[job_id] = replace(old, state=state, base_state=state, **values)

    def state(self, build_id: int) -> str:
        return str(self.service.status(OWNER, "alpha", str(build_id))["state"])


def add_member(w: World, actor: Actor, role: str) -> None:
    with w.ledger.transaction() as db:
        db.table("platform_users").insert({"id": actor.platform_user, "created_at": "x"})
        db.table("members").insert(
            {"project_id": 1, "platform_user_id": actor.platform_user, "role": role,
             "added_at": "x", "added_by": "ada"}
        )  # fmt: skip


def dev_mode(w: World, on: bool = True) -> None:
    with w.ledger.transaction() as db:
        db.execute("UPDATE projects SET dev_mode = ? WHERE name = 'alpha'", [int(on)])


@pytest.fixture
def b(tmp_path: Path) -> Builds:
    w = world(tmp_path, ("alpha", "stopped"))
    dev_mode(w)
    builds = Builds(w)
    builds.draft()
    return builds


def ledger_count(b: Builds, table: str) -> int:
    return int(b.w.ledger.db.table(table).count)


# -- gates -------------------------------------------------------------------------------------


def test_the_deployment_switch_refuses_drafts_and_builds_and_changes_nothing(b: Builds) -> None:
    b.w.service.config = replace(b.w.service.config, builds=BuildsConfig(enabled=False))
    with pytest.raises(Forbidden, match="image builds are turned off on this deployment"):
        b.build()
    with pytest.raises(Forbidden, match="turned off"):
        b.draft("other")
    assert ledger_count(b, "image_builds") == 0 and ledger_count(b, "image_drafts") == 1
    assert b.w.slurm.submitted == []


def test_outside_dev_mode_a_build_is_refused_with_what_the_owner_does(b: Builds) -> None:
    dev_mode(b.w, False)
    with pytest.raises(Conflict, match="rxctl project set --project alpha --dev-mode on"):
        b.build()
    assert b.w.slurm.submitted == [] and ledger_count(b, "image_builds") == 0


def test_editors_build_and_viewers_may_not(b: Builds) -> None:
    add_member(b.w, VIEWER, "viewer")
    add_member(b.w, EDITOR, "editor")
    with pytest.raises(Forbidden, match="build in project alpha needs role owner or manager"):
        b.build(VIEWER)
    with pytest.raises(Forbidden, match="needs role"):
        b.service.create_draft(VIEWER, "alpha", {"name": "v", "kind": "definition",
                                                 "text": DEFINITION})  # fmt: skip
    started = b.build(EDITOR)
    assert started["built_by"] == "eve" and started["runtime_user"] == RUNTIME_USER
    # Anyone who may view the project may read the list.
    assert [i["id"] for i in b.service.list_builds(VIEWER, "alpha")["images"]] == [started["id"]]


def test_a_draft_with_problems_is_not_built(b: Builds) -> None:
    b.service.edit_draft(OWNER, "alpha", "main", {"text": "From: x\n%pots\n"})
    with pytest.raises(BadRequest, match="draft main does not build: line 1: "):
        b.build()
    assert b.w.slurm.submitted == []


# -- submission --------------------------------------------------------------------------------


def test_a_build_is_submitted_as_the_runtime_identity_with_a_lease(b: Builds) -> None:
    started = b.build(name="py", cpus=3, mem_mb=2000, time_limit_min=30, partition="gpu")
    script, spec, as_user = b.w.slurm.submitted[0]
    build_id = started["id"]
    assert as_user.user == RUNTIME_USER
    assert spec.name == f"{BUILD_JOB_PREFIX}alpha-{build_id}"
    assert spec.comment == f"rx:build={build_id}" and not spec.name.startswith("rx-")
    assert (spec.partition, spec.cpus, spec.mem_mb, spec.time_limit_min) == ("gpu", 3, 2000, 30)
    assert spec.workdir is not None
    assert spec.workdir.endswith(f"/{BUILD_JOB_PREFIX}alpha-{build_id}")
    assert spec.output == f"{spec.workdir}/job-%j.out"
    assert spec.requeue is False
    request = b.w.runtime.builds[0]
    # The context is a folder of the project's workspace ("." by default: the whole).
    assert request.definition == DEFINITION and request.context == b.w.row("alpha")["state_dir"]
    assert b.folders == [(f"{BUILD_JOB_PREFIX}alpha-{build_id}", as_user)]
    assert started["state"] == "queued" and started["job_id"] == 1000 and started["name"] == "py"
    leases = list(b.w.ledger.db.table("build_leases").rows)
    assert [(lease["partition"], lease["cpus"], lease["project"]) for lease in leases] == [
        ("gpu", 3, "alpha")
    ]


def test_defaults_come_from_builds_then_the_deployment(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    dev_mode(w)
    b = Builds(w, cpus=4, mem_mb=8000, time_limit_min=90)
    b.draft()
    b.build()
    spec = w.slurm.submitted[0][1]
    # [builds] partition and [defaults] partition empty: Slurm's default partition.
    assert (spec.partition, spec.cpus, spec.mem_mb, spec.time_limit_min) == ("cpu", 4, 8000, 90)


def test_a_build_that_does_not_fit_a_quota_is_refused_with_the_bottleneck(b: Builds) -> None:
    with b.w.ledger.transaction() as db:
        db.table("quotas").insert(
            {"partition": "cpu", "scope": "deployment", "subject": "", "max_cpus": 3,
             "created_at": "x", "created_by": "op"}
        )  # fmt: skip
    b.build(cpus=2)
    with pytest.raises(Conflict, match="the build does not fit: partition cpu: deployment quota"
                       " 3 CPUs, 2 in use by alpha \\(2\\); this build needs 2"):  # fmt: skip
        b.build(name="second", cpus=2)
    assert len(b.w.slurm.submitted) == 1


def test_a_build_no_node_could_run_is_refused_before_anything_is_recorded(b: Builds) -> None:
    asked: list[Any] = []

    def validate(settings: Any) -> None:
        asked.append(settings)
        raise BadRequest("unknown partition 'nope'; Slurm has: cpu, gpu")

    b.service.validate_resources = validate
    with pytest.raises(BadRequest, match="unknown partition 'nope'"):
        b.build(partition="nope", cpus=5)
    assert (asked[0].partition, asked[0].cpus) == ("nope", 5)
    assert ledger_count(b, "image_builds") == 0 and b.w.slurm.submitted == []


def test_names_of_live_images_are_unique(b: Builds) -> None:
    b.build(name="py")
    with pytest.raises(Conflict, match="already has an image named 'py'"):
        b.build(name="py")


def test_a_submission_slurm_refuses_ends_failed_and_frees_its_lease(b: Builds) -> None:
    b.w.slurm.answering = False
    with pytest.raises(Exception, match="the build job was not submitted"):
        b.build()
    (row,) = b.w.ledger.db.table("image_builds").rows
    assert row["state"] == "failed" and "not submitted" in row["reason"]
    assert ledger_count(b, "build_leases") == 0


# -- the reconciler's pass ---------------------------------------------------------------------


def test_states_queued_building_succeeded_with_size_and_digest(b: Builds) -> None:
    build_id, job_id = b.build()["id"], 1000
    assert b.service.reconcile() == 0 and b.state(build_id) == "queued"
    b.job(job_id, "RUNNING", nodes="n2")
    assert b.service.reconcile() == 1
    running = b.service.status(OWNER, "alpha", str(build_id))
    assert (running["state"], running["node"]) == ("building", "n2")
    b.job(job_id, "COMPLETED", exit_code=0)
    b.outputs[job_id] = f"INFO: Build complete\nrx-build: succeeded size=4096 sha256={SHA}\n"
    b.service.reconcile()
    done = b.service.status(OWNER, "alpha", str(build_id))
    assert (done["state"], done["size"], done["sha256"]) == ("succeeded", 4096, SHA)
    assert done["image"].endswith(f"{BUILD_JOB_PREFIX}alpha-{build_id}/image.sif")
    assert b.read_as[-1] is not None and b.read_as[-1].user == RUNTIME_USER
    assert ledger_count(b, "build_leases") == 0
    events = [e["action"] for e in b.w.ledger.db.table("events").rows]
    assert [e for e in events if e.startswith("image.build")] == [
        "image.build-submitted",
        "image.build-started",
        "image.build-succeeded",
    ]


def test_a_failing_post_ends_failed_with_the_failing_line(b: Builds) -> None:
    build_id = b.build()["id"]
    b.job(1000, "FAILED", exit_code=1)
    b.outputs[1000] = (
        "INFO:    Running post scriptlet\n+ echo hi\nhi\n+ false\n"
        "FATAL:   While performing build: while running engine: while running %post section: "
        "exit status 1\nrx-build: failed: apptainer build exited with status 255\n"
    )
    b.service.reconcile()
    failed = b.service.status(OWNER, "alpha", str(build_id))
    assert failed["state"] == "failed"
    assert failed["reason"].startswith("%post failed at line 6: false (While performing build")


def test_a_success_line_printed_by_the_build_itself_is_not_believed(b: Builds) -> None:
    build_id = b.build()["id"]
    b.job(1000, "FAILED", exit_code=1)
    b.outputs[1000] = (
        f"+ echo rx-build: succeeded size=1 sha256={SHA}\nrx-build: succeeded size=1 sha256={SHA}\n"
        "rx-build: failed: apptainer build exited with status 255\n"
    )
    b.service.reconcile()
    assert b.state(build_id) == "failed"


def test_a_job_over_its_time_limit_or_cancelled_outside_is_said_so(b: Builds) -> None:
    first = b.build()["id"]
    second = b.build(name="two")["id"]
    b.job(1000, "TIMEOUT")
    b.job(1001, "CANCELLED")
    b.service.reconcile()
    assert "time limit" in b.service.status(OWNER, "alpha", str(first))["reason"]
    assert b.state(second) == "cancelled"


def test_cancel_ends_the_build_and_its_job_and_is_not_undone_by_the_pass(b: Builds) -> None:
    build_id = b.build()["id"]
    b.job(1000, "RUNNING")
    b.service.reconcile()
    cancelled = b.service.cancel(OWNER, "alpha", str(build_id))
    assert cancelled["state"] == "cancelled" and b.w.slurm.cancelled == [1000]
    assert ledger_count(b, "build_leases") == 0
    b.service.reconcile()
    assert b.state(build_id) == "cancelled"
    with pytest.raises(Conflict, match="not running"):
        b.service.cancel(OWNER, "alpha", str(build_id))


def test_a_cancel_slurm_did_not_answer_is_sent_again_by_the_pass(b: Builds) -> None:
    build_id = b.build()["id"]
    b.job(1000, "RUNNING")
    b.w.slurm.answering = False
    b.service.cancel(OWNER, "alpha", str(build_id))
    b.w.slurm.answering = True
    assert 1000 in b.w.slurm.jobs and b.w.slurm.jobs[1000].is_active
    b.service.reconcile()
    assert b.w.slurm.cancelled == [1000]


def test_a_lost_job_id_is_adopted_from_the_jobs_comment_and_user(b: Builds) -> None:
    build_id = b.build()["id"]
    with b.w.ledger.transaction() as db:
        db.execute("UPDATE image_builds SET job_id = NULL")
    # An imitation by another user first: not this build's.
    b.w.slurm.jobs[5] = JobInfo(5, f"{BUILD_JOB_PREFIX}alpha-{build_id}", "mallory", "RUNNING",
                                comment=f"rx:build={build_id}")  # fmt: skip
    b.service.reconcile()
    assert b.service.status(OWNER, "alpha", str(build_id))["job_id"] == 1000


def test_a_build_never_submitted_fails_after_the_grace(b: Builds) -> None:
    build_id = b.build()["id"]
    with b.w.ledger.transaction() as db:
        db.execute("UPDATE image_builds SET job_id = NULL")
    del b.w.slurm.jobs[1000]
    b.service.reconcile()
    assert b.state(build_id) == "queued"
    b.w.clock.advance(SUBMIT_GRACE_S + 1)
    b.service.reconcile()
    assert b.service.status(OWNER, "alpha", str(build_id))["reason"] == (
        "the build job was never submitted"
    )


def test_a_job_gone_without_a_record_fails_only_after_the_grace(b: Builds) -> None:
    build_id = b.build()["id"]
    del b.w.slurm.jobs[1000]
    b.service.reconcile()
    assert b.state(build_id) == "queued"
    b.w.clock.advance(GONE_GRACE_S + 1)
    b.service.reconcile()
    assert b.state(build_id) == "failed"


def test_slurm_not_answering_changes_nothing(b: Builds) -> None:
    build_id = b.build()["id"]
    b.job(1000, "COMPLETED")
    b.w.slurm.answering = False
    assert b.service.reconcile() == 0
    assert b.state(build_id) == "queued"


def test_one_bad_build_does_not_stop_the_pass(b: Builds) -> None:
    first = b.build()["id"]
    second = b.build(name="two")["id"]
    b.job(1000, "COMPLETED")
    b.job(1001, "RUNNING")
    with b.w.ledger.transaction() as db:  # a record the pass cannot follow
        db.execute("UPDATE image_builds SET runtime_user = 'no-such-user-x' WHERE id = ?", [first])
    b.service.reconcile()
    assert b.state(second) == "building"


def test_the_reconciler_runs_the_build_pass(b: Builds) -> None:
    build_id = b.build()["id"]
    b.job(1000, "RUNNING")
    b.w.reconciler.extra_passes.append(b.service.reconcile)
    b.w.reconcile()
    assert b.state(build_id) == "building"


# -- rename, delete, logs ----------------------------------------------------------------------


def test_rename_only_queued_or_succeeded_and_delete_only_ended(b: Builds) -> None:
    build_id = b.build(name="py")["id"]
    assert b.service.rename(OWNER, "alpha", "py", "py2")["name"] == "py2"
    with pytest.raises(Conflict, match="cancel it first"):
        b.service.delete(OWNER, "alpha", "py2")
    b.job(1000, "FAILED")
    b.service.reconcile()
    with pytest.raises(Conflict, match="only a queued or succeeded image can be renamed"):
        b.service.rename(OWNER, "alpha", str(build_id), "py3")
    with pytest.raises(BadRequest, match="image name must be"):
        b.service.rename(OWNER, "alpha", str(build_id), "../x")
    with pytest.raises(NotFound):
        b.service.status(OWNER, "alpha", "nope")


def test_logs_are_read_as_the_runtime_user(b: Builds) -> None:
    build_id = b.build()["id"]
    b.outputs[1000] = "rx-build: copying\n"
    answer = b.service.logs(OWNER, "alpha", str(build_id))
    assert answer["text"] == "rx-build: copying\n" and answer["state"] == "queued"
    assert b.read_as[-1] is not None and b.read_as[-1].user == RUNTIME_USER


def test_dev_mode_is_the_owners_and_audited(b: Builds) -> None:
    from rxslurm.daemon.projects.dev_mode import set_dev_mode

    add_member(b.w, EDITOR, "editor")
    with pytest.raises(Forbidden, match="edit-settings in project alpha needs role owner"):
        set_dev_mode(b.w.ledger, EDITOR, "alpha", False)
    with pytest.raises(BadRequest, match="true or false"):
        set_dev_mode(b.w.ledger, OWNER, "alpha", "off")
    assert set_dev_mode(b.w.ledger, OWNER, "alpha", False) == {"name": "alpha", "dev_mode": False}
    events = [e["action"] for e in b.w.ledger.db.table("events").rows]
    assert events.count("project.dev-mode") == 1


def test_config_is_checked(b: Builds) -> None:
    from rxslurm.daemon.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="builds.cpus must be at least 1"):
        parse_config({"builds": {"cpus": 0}})
    with pytest.raises(ConfigError, match="builds.partition"):
        parse_config({"builds": {"partition": "a b"}})
    assert parse_config({}).builds.enabled is False
    assert isinstance(Config().builds, BuildsConfig)


def test_a_project_with_a_running_build_is_not_deleted(b: Builds) -> None:
    from rxslurm.daemon.projects.service import delete_project

    build_id = b.build()["id"]
    b.w.set("alpha", state="disabled")
    with pytest.raises(Conflict, match="has 1 image build\\(s\\) running; cancel them first"):
        delete_project(b.w.ledger, OWNER, "alpha")
    b.service.cancel(OWNER, "alpha", str(build_id))
    delete_project(b.w.ledger, OWNER, "alpha")
    # Its drafts and build records went with it.
    assert ledger_count(b, "image_builds") == 0 and ledger_count(b, "image_drafts") == 0


@pytest.mark.parametrize(
    ("name", "project", "expected"),
    [
        ("rxbuild-a-12", "a", True),
        ("rxbuild-a-1-5", "a", False),  # project a-1's build 5
        ("rxbuild-a-1-5", "a-1", True),
        ("rxbuild-a-", "a", False),
        ("rxbuild-a-x", "a", False),
        ("rx-a", "a", False),
    ],
)
def test_build_folders_of_a_project_are_told_apart_from_its_namesakes(
    name: str, project: str, expected: bool
) -> None:
    from rxslurm.protocol.job_comment import is_build_of

    assert is_build_of(name, project) is expected
