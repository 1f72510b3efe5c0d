"""Detached commands with fake ports and the real keeper script run as this process: the output
file it writes (capped, never through a link), the ledger's record and its audit events, the
container kept awake while one runs, `ps` joined with squeue's steps, `kill` on the step, and
bad input refused with nothing changed."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rxslurm.daemon.containers import sessions as sessions_module
from rxslurm.daemon.containers.sessions import DetachedCommands, LiveSession
from rxslurm.daemon.errors import BadRequest, Conflict, NotFound, Unavailable
from rxslurm.daemon.runtime import rotated_output
from rxslurm.daemon.runtime.command_output import keeper_argv, output_name, start_keeper
from rxslurm.daemon.runtime.job_output import read_output
from rxslurm.protocol.agent_wire import Endpoint
from rxslurm.slurm.runas import RunAs
from rxslurm.slurm.steps import StepInfo
from tests.support.cluster import wait_for
from tests.unit.test_reconciler_edges import OWNER, World, running, world

STRANGER_ACTOR = OWNER.__class__(
    platform_user="bea", uid=65533, user="bea", admin=False, origin="socket"
)


# -- the keeper, run as this process ----------------------------------------------------------


def keep(tmp_path: Path, command_id: str, script: str, cap: int = 1 << 20) -> dict[str, Any]:
    """Run the keeper over `sh -c script` to its end; its last word."""
    proc = start_keeper(str(tmp_path), command_id, ["sh", "-c", script], None, {}, cap)
    out, _ = proc.communicate(timeout=30)
    said = [json.loads(line) for line in out.splitlines()]
    return {"said": said, "last": said[-1] if said else {}}


def test_the_keeper_writes_stdout_and_stderr_to_the_commands_file_and_reports_its_status(
    tmp_path: Path,
) -> None:
    result = keep(tmp_path, "0a1b2c3d", "echo out; echo err >&2; exit 3")

    assert result["last"] == {"exit": 3}
    assert "started" in result["said"][0]
    written = (tmp_path / "exec-0a1b2c3d.out").read_text()
    assert sorted(written.splitlines()) == ["err", "out"]


def test_the_keeper_drops_sruns_task_end_lines_as_an_exec_session_does(tmp_path: Path) -> None:
    script = (
        "echo mine; echo 'srun: error: n1: task 0: Exited with exit code 4' >&2; "
        "echo 'srun: error: n1: task 0: Out Of Memory' >&2; exit 4"
    )

    assert keep(tmp_path, "0a1b2c3f", script)["last"] == {"exit": 4}

    assert (tmp_path / "exec-0a1b2c3f.out").read_text().splitlines() == [
        "mine",
        "srun: error: n1: task 0: Out Of Memory",
    ]


def test_the_keeper_reports_a_step_killed_by_a_signal_as_128_plus_n(tmp_path: Path) -> None:
    assert keep(tmp_path, "0a1b2c3e", "kill -TERM $$")["last"] == {"exit": 143}


def test_the_keeper_keeps_at_most_twice_the_cap_on_disk(tmp_path: Path) -> None:
    cap = 4096
    # 100 lines of 100 bytes: 10,000 bytes through a 4 KiB cap.
    script = "i=0; while [ $i -lt 100 ]; do printf '%099d\\n' $i; i=$((i+1)); done"

    assert keep(tmp_path, "0000beef", script, cap)["last"] == {"exit": 0}

    current = (tmp_path / "exec-0000beef.out").read_bytes()
    older = (tmp_path / "exec-0000beef.out.1").read_bytes()
    assert len(current) <= cap and len(older) <= cap
    # The newest output is kept: the last line is the 100th.
    assert current.endswith(b"%099d\n" % 99)
    # 10,000 bytes are more than two parts: the oldest went, and the marker says so.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "exec-0000beef.out",
        "exec-0000beef.out.1",
        "exec-0000beef.out.dropped",
    ]


def test_the_keeper_never_writes_through_a_link_or_into_a_file_already_there(
    tmp_path: Path,
) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep me\n")
    (tmp_path / "exec-11112222.out").symlink_to(target)

    result = keep(tmp_path, "11112222", "echo should-not-run")

    assert (
        "error" in result["last"] and "cannot create exec-11112222.out" in result["last"]["error"]
    )
    assert target.read_text() == "keep me\n"


def test_the_keepers_argv_is_the_isolated_interpreter_with_data_arguments() -> None:
    argv = keeper_argv("/state", "0a1b2c3d", ["srun", "--", "x; rm -rf /"], 99)

    assert argv[1:3] == ["-I", "-S"] and argv[3] == "-c"
    assert argv[5:8] == ["/state", "exec-0a1b2c3d.out", "99"]
    assert argv[9:] == ["--", "srun", "--", "x; rm -rf /"]


@pytest.mark.parametrize("bad", ["", "0A1B2C3D", "../../etc", "0a1b2c3", "0a1b2c3d0"])
def test_an_output_name_takes_only_a_command_id(bad: str) -> None:
    with pytest.raises(ValueError):
        output_name(bad)


# -- the service ------------------------------------------------------------------------------


class Keepers:
    """A keeper that runs a local command instead of the step (there is no srun here) and
    records the step it was given."""

    def __init__(self, tmp_path: Path, script: str = "exec sleep 60") -> None:
        self.tmp_path = tmp_path
        self.script = script
        self.steps: list[list[str]] = []
        self.envs: list[dict[str, str]] = []
        self.procs: list[subprocess.Popen[str]] = []

    def __call__(
        self,
        state_dir: str,
        command_id: str,
        step: Sequence[str],
        as_user: RunAs | None,
        env: dict[str, str],
    ) -> subprocess.Popen[str]:
        self.steps.append(list(step))
        self.envs.append(dict(env))
        proc = start_keeper(state_dir, command_id, ["sh", "-c", self.script], None, env)
        self.procs.append(proc)
        return proc

    def end_all(self) -> None:
        """SIGTERM to each step (the keeper's child), as scancel gives it; the keepers report."""
        for proc in self.procs:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            wait_for(
                lambda p=proc, c=children: p.poll() is not None or bool(c.read_text().split()),
                10,
                what="the keeper to start its step",
            )
            if proc.poll() is None:
                for child in children.read_text().split():
                    os.kill(int(child), 15)
            proc.wait(timeout=30)


@pytest.fixture
def keepers(tmp_path: Path) -> Any:
    made = Keepers(tmp_path)
    yield made
    made.end_all()


def commands_of(w: World, keepers: Keepers) -> DetachedCommands:
    return DetachedCommands(w.service, w.reconciler.sessions, keeper=keepers)


def row_of(w: World, command_id: str) -> dict[str, Any]:
    return dict(w.ledger.db.table("exec_sessions").get(command_id))


def events(w: World, action: str) -> list[dict[str, Any]]:
    return list(w.ledger.db.table("events").rows_where("action = ?", [action]))


def test_a_detached_command_is_the_exec_step_of_the_running_container(
    tmp_path: Path, keepers: Keepers
) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    commands = commands_of(w, keepers)

    started = commands.start(OWNER, "alpha", ["python", "train.py", "--lr", "0.1"], "/workspace")

    assert (started["state"], started["kind"], started["started_by"]) == (
        "running",
        "detached",
        "ada",
    )
    step = keepers.steps[0]
    instance = w.row("alpha")["instance"]
    assert step[:2] == ["srun", f"--jobid={job_id}"]
    assert step[step.index("--") + 1 :] == [
        "/fake/apptainer",
        "exec",
        f"instance://{instance}",
        "python",
        "train.py",
        "--lr",
        "0.1",
    ]
    row = row_of(w, started["id"])
    assert json.loads(row["argv"]) == ["python", "train.py", "--lr", "0.1"]
    assert row["step_name"] in " ".join(step)
    [event] = events(w, "exec.detached")
    assert event["actor"] == "ada" and json.loads(event["detail"])["id"] == started["id"]


def test_its_own_variables_reach_the_keepers_environment_not_argv_nor_the_audit(
    tmp_path: Path, keepers: Keepers
) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    running(w, "alpha")

    started = commands_of(w, keepers).start(
        OWNER, "alpha", ["python", "train.py"], "/workspace", {"EPOCHS": "3", "TOKEN": "v4lue"}
    )

    assert keepers.envs[0]["APPTAINERENV_EPOCHS"] == "3"
    assert keepers.envs[0]["APPTAINERENV_TOKEN"] == "v4lue"
    assert not any("v4lue" in word for word in keepers.steps[0])
    [event] = events(w, "exec.detached")
    assert "v4lue" not in event["detail"]
    assert json.loads(event["detail"])["env"] == ["EPOCHS", "TOKEN"]
    assert "v4lue" not in json.dumps(row_of(w, started["id"]))


@pytest.mark.parametrize(
    "env", [["EPOCHS=3"], {"LD_PRELOAD": "/x.so"}, {"A": "a\0b"}, {"A": 3}, {"1A": "x"}]
)
def test_bad_variables_are_refused_and_change_nothing(
    tmp_path: Path, keepers: Keepers, env: Any
) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    running(w, "alpha")

    with pytest.raises(BadRequest):
        commands_of(w, keepers).start(OWNER, "alpha", ["true"], "/workspace", env)

    assert keepers.steps == [] and list(w.ledger.db.table("exec_sessions").rows) == []
    assert events(w, "exec.detached") == []


def test_a_container_that_does_not_run_is_refused_and_nothing_is_recorded(
    tmp_path: Path, keepers: Keepers
) -> None:
    w = world(tmp_path, ("alpha", "stopped"))

    with pytest.raises(Conflict, match="not running"):
        commands_of(w, keepers).start(OWNER, "alpha", ["true"])

    assert keepers.steps == [] and list(w.ledger.db.table("exec_sessions").rows) == []


@pytest.mark.parametrize(
    ("argv", "cwd"),
    [([], "/workspace"), ("ls", "/workspace"), (["a\0b"], "/workspace"), (["ls"], "rel/dir")],
)
def test_bad_input_is_refused_and_changes_nothing(
    tmp_path: Path, keepers: Keepers, argv: Any, cwd: Any
) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    running(w, "alpha")

    with pytest.raises(BadRequest):
        commands_of(w, keepers).start(OWNER, "alpha", argv, cwd)

    assert keepers.steps == [] and list(w.ledger.db.table("exec_sessions").rows) == []


def test_a_stranger_is_told_the_project_does_not_exist(tmp_path: Path, keepers: Keepers) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    running(w, "alpha")
    with w.ledger.transaction() as db:
        db.table("platform_users").insert({"id": "bea", "created_at": "2026-01-01T00:00:00Z"})

    with pytest.raises(NotFound):
        commands_of(w, keepers).start(STRANGER_ACTOR, "alpha", ["true"])
    with pytest.raises(NotFound):
        commands_of(w, keepers).sessions_of(STRANGER_ACTOR, "alpha")


def test_a_running_detached_command_keeps_the_container_awake_and_its_end_is_recorded(
    tmp_path: Path, keepers: Keepers
) -> None:
    w = world(tmp_path, ("alpha", "starting"), idle_timeout_min=5)
    running(w, "alpha")
    commands = commands_of(w, keepers)
    started = commands.start(OWNER, "alpha", ["sleep", "600"])

    w.clock.advance(3600)
    w.reconcile()
    assert w.state("alpha") == "running" and w.slurm.cancelled == []

    keepers.end_all()
    wait_for(lambda: row_of(w, started["id"])["state"] == "ended", 30, what="its end recorded")
    assert row_of(w, started["id"])["exit_code"] == 143
    assert w.reconciler.sessions.count(w.row("alpha")["id"]) == 0
    # Its end is activity: the idle timer starts again from there.
    w.clock.advance(4 * 60)
    w.reconcile()
    assert w.state("alpha") == "running"


def test_ps_joins_the_records_with_squeues_steps_and_lists_interactive_sessions(
    tmp_path: Path, keepers: Keepers
) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    commands = commands_of(w, keepers)
    started = commands.start(OWNER, "alpha", ["sleep", "600"])
    step_name = row_of(w, started["id"])["step_name"]
    w.slurm.running_steps = [
        StepInfo(job_id, f"{job_id}.3", step_name, None),
        StepInfo(job_id, f"{job_id}.4", "rx-exec-00ff00ff00ff00ff", None),
        # The runtime user's own step (the network door's direct exec): no record of rxd's.
        StepInfo(job_id, f"{job_id}.5", "rx-exec-abcdef0123456789", 1796084904),
        StepInfo(job_id, f"{job_id}.6", "not-ours", 1796084904),
    ]
    commands.live.add(
        LiveSession(w.row("alpha")["id"], job_id, "rx-exec-00ff00ff00ff00ff", "ada", (), "z", True)
    )

    listed = commands.sessions_of(OWNER, "alpha")

    assert listed["steps_known"] is True
    by_kind = {r["kind"]: r for r in listed["sessions"]}
    assert by_kind["detached"]["step_id"] == f"{job_id}.3"
    assert (by_kind["shell"]["step_id"], by_kind["shell"]["started_by"]) == (f"{job_id}.4", "ada")
    direct = by_kind["exec"]
    assert (direct["id"], direct["step_id"], direct["started_by"]) == (
        "abcdef01",
        f"{job_id}.5",
        "nobody",
    )
    assert direct["started_at"] == "2026-12-01T00:28:24.000000Z"
    assert len(listed["sessions"]) == 3


def test_ps_settles_a_command_whose_step_is_gone_after_rxd_lost_its_keeper(
    tmp_path: Path, keepers: Keepers
) -> None:
    # As after a restart of rxd: a running record no keeper of this rxd's waits for.
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    with w.ledger.transaction() as db:
        db.table("exec_sessions").insert(
            {
                "id": "deadbeef",
                "container_id": w.row("alpha")["id"],
                "project_id": w.row("alpha")["project_id"],
                "job_id": job_id,
                "step_name": "rx-exec-1234123412341234",
                "argv": '["sleep", "9"]',
                "started_by": "ada",
                "started_at": "2026-01-01T00:00:00Z",
            }
        )
    commands = commands_of(w, keepers)

    w.slurm.answering = False
    unknown = commands.sessions_of(OWNER, "alpha")
    assert unknown["steps_known"] is False and unknown["sessions"][0]["state"] == "running"

    w.slurm.answering = True
    [settled] = commands.sessions_of(OWNER, "alpha")["sessions"]
    assert (settled["state"], settled["exit_code"]) == ("ended", None)


def test_a_lost_commands_status_comes_from_accounting_when_it_knows(
    tmp_path: Path, keepers: Keepers
) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    with w.ledger.transaction() as db:
        db.table("exec_sessions").insert(
            {
                "id": "deadbeef",
                "container_id": w.row("alpha")["id"],
                "project_id": w.row("alpha")["project_id"],
                "job_id": job_id,
                "step_name": "rx-exec-1234123412341234",
                "argv": '["sleep", "9"]',
                "started_by": "ada",
                "started_at": "2026-01-01T00:00:00Z",
            }
        )
    w.slurm.ended_steps[job_id] = {"rx-exec-1234123412341234": 143}

    [settled] = commands_of(w, keepers).sessions_of(OWNER, "alpha")["sessions"]

    assert (settled["state"], settled["exit_code"]) == ("ended", 143)


def test_kill_signals_the_step_as_the_runtime_user_and_is_audited(
    tmp_path: Path, keepers: Keepers
) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    commands = commands_of(w, keepers)
    started = commands.start(OWNER, "alpha", ["sleep", "600"])
    step_name = row_of(w, started["id"])["step_name"]
    w.slurm.running_steps = [StepInfo(job_id, f"{job_id}.0", step_name, None)]

    answer = commands.kill(OWNER, "alpha", started["id"], "sigint")

    assert w.slurm.step_signals == [(f"{job_id}.0", "INT")]
    assert (answer["signalled"], answer["step_id"]) == ("INT", f"{job_id}.0")
    [event] = events(w, "exec.signalled")
    assert json.loads(event["detail"]) == {
        "id": started["id"],
        "signal": "INT",
        "step": f"{job_id}.0",
    }


def test_where_the_container_runs_the_launcher_a_command_runs_under_it_and_kill_uses_it(
    tmp_path: Path, keepers: Keepers
) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    # An agent answering means the container's python3 runs: the launcher can too.
    w.runtime.endpoints[job_id] = Endpoint(host="10.0.0.5", port=40001, key=b"k" * 32)
    commands = commands_of(w, keepers)
    started = commands.start(OWNER, "alpha", ["sh", "-c", "trap 'exit 7' TERM; sleep 600"])
    step_name = row_of(w, started["id"])["step_name"]
    w.slurm.running_steps = [StepInfo(job_id, f"{job_id}.0", step_name, None)]
    instance = w.row("alpha")["instance"]
    step = keepers.steps[0]
    assert step[step.index("--") + 1 :][3:6] == ["/fake/launcher", step_name, "--"]

    commands.kill(OWNER, "alpha", started["id"])

    # To the command's group through its launcher (its trap runs), never scancel on the step.
    assert w.slurm.inside_signals == [
        ["/fake/apptainer", "exec", f"instance://{instance}", "/fake/signal", step_name, "TERM"]
    ]
    assert w.slurm.step_signals == []
    assert json.loads(events(w, "exec.signalled")[0]["detail"])["signal"] == "TERM"

    # KILL ends the step at once; a launcher that is not found leaves it to slurmstepd.
    commands.kill(OWNER, "alpha", started["id"], "KILL")
    w.slurm.launcher_answers = False
    commands.kill(OWNER, "alpha", started["id"], "HUP")
    assert w.slurm.step_signals == [(f"{job_id}.0", "KILL"), (f"{job_id}.0", "HUP")]
    assert len(w.slurm.inside_signals) == 2


def test_without_the_launcher_kill_signals_the_step(tmp_path: Path, keepers: Keepers) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    commands = commands_of(w, keepers)
    started = commands.start(OWNER, "alpha", ["sleep", "600"])
    step_name = row_of(w, started["id"])["step_name"]
    w.slurm.running_steps = [StepInfo(job_id, f"{job_id}.0", step_name, None)]

    commands.kill(OWNER, "alpha", started["id"])

    assert "/fake/launcher" not in keepers.steps[0]
    assert w.slurm.inside_signals == []
    assert w.slurm.step_signals == [(f"{job_id}.0", "TERM")]


@pytest.mark.parametrize(
    ("command_id", "signal", "error"),
    [
        ("../x", "TERM", BadRequest),
        ("0123abcd", "TERM", NotFound),
        (None, "STOP", BadRequest),
        (None, "TERM; rm", BadRequest),
    ],
)
def test_kill_refuses_bad_ids_and_signals_and_sends_nothing(
    tmp_path: Path, keepers: Keepers, command_id: str | None, signal: str, error: type
) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    commands = commands_of(w, keepers)
    started = commands.start(OWNER, "alpha", ["sleep", "600"])
    step_name = row_of(w, started["id"])["step_name"]
    w.slurm.running_steps = [StepInfo(job_id, f"{job_id}.0", step_name, None)]

    with pytest.raises(error):
        commands.kill(OWNER, "alpha", command_id or started["id"], signal)

    assert w.slurm.step_signals == [] and events(w, "exec.signalled") == []


def test_kill_of_an_ended_command_is_a_conflict(tmp_path: Path, keepers: Keepers) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    running(w, "alpha")
    keepers.script = "true"
    commands = commands_of(w, keepers)
    started = commands.start(OWNER, "alpha", ["true"])
    wait_for(lambda: row_of(w, started["id"])["state"] == "ended", 30, what="its end")

    with pytest.raises(Conflict, match="already ended"):
        commands.kill(OWNER, "alpha", started["id"])


def test_the_output_is_the_commands_file_read_by_the_reader(
    tmp_path: Path, keepers: Keepers, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    running(w, "alpha")
    keepers.script = "echo hello from the command"
    commands = commands_of(w, keepers)
    started = commands.start(OWNER, "alpha", ["x"])
    wait_for(lambda: row_of(w, started["id"])["state"] == "ended", 30, what="its end")
    # The reader as this process (the runtime user's switch needs root).
    monkeypatch.setattr(
        rotated_output,
        "read_output",
        lambda state_dir, job, who, **kw: read_output(state_dir, job, None, **kw),
    )

    answer = commands.output(OWNER, "alpha", started["id"])

    assert answer["text"] == "hello from the command\n"
    assert (answer["live"], answer["exit_code"], answer["exec"]) == (False, 0, started["id"])
    with pytest.raises(BadRequest):
        commands.output(OWNER, "alpha", "../job-1.out")


def test_a_keeper_that_cannot_create_the_output_fails_the_start_and_the_record_ends(
    tmp_path: Path, keepers: Keepers
) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    running(w, "alpha")
    w.set("alpha", state_dir=str(tmp_path / "no-such-folder"))
    commands = commands_of(w, keepers)

    with pytest.raises(Unavailable, match="cannot start the command: cannot create exec-"):
        commands.start(OWNER, "alpha", ["true"])

    [row] = w.ledger.db.table("exec_sessions").rows
    wait_for(lambda: row_of(w, row["id"])["state"] == "ended", 30, what="its end recorded")
    assert row_of(w, row["id"])["exit_code"] is None
    assert w.reconciler.sessions.count(w.row("alpha")["id"]) == 0


def test_the_ledger_forgets_ended_commands_beyond_the_newest_kept(
    tmp_path: Path, keepers: Keepers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sessions_module, "KEPT_RECORDS", 2)
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    cid, pid = w.row("alpha")["id"], w.row("alpha")["project_id"]
    with w.ledger.transaction() as db:
        for n in range(4):
            db.table("exec_sessions").insert(
                {
                    "id": f"0000000{n}",
                    "container_id": cid,
                    "project_id": pid,
                    "job_id": job_id,
                    "step_name": "rx-exec-x",
                    "argv": "[]",
                    "started_by": "ada",
                    "started_at": f"2026-01-01T00:00:0{n}Z",
                    "state": "ended" if n else "running",
                }
            )

    started = commands_of(w, keepers).start(OWNER, "alpha", ["true"])

    left = sorted(r["id"] for r in w.ledger.db.table("exec_sessions").rows)
    assert left == sorted(["00000000", "00000002", "00000003", started["id"]])


def test_a_follower_past_the_end_of_a_new_file_reads_it_from_its_start(
    tmp_path: Path, keepers: Keepers, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    running(w, "alpha")
    keepers.script = "echo after the cut"
    commands = commands_of(w, keepers)
    started = commands.start(OWNER, "alpha", ["x"])
    wait_for(lambda: row_of(w, started["id"])["state"] == "ended", 30, what="its end")
    monkeypatch.setattr(
        rotated_output,
        "read_output",
        lambda state_dir, job, who, **kw: read_output(state_dir, job, None, **kw),
    )

    # The follower had read 5000 bytes of the file before the keeper started a new one.
    answer = commands.output(OWNER, "alpha", started["id"], offset=5000)

    assert (answer["text"], answer["start"]) == ("after the cut\n", 0)


@settings(max_examples=15, deadline=None)
@given(
    cap=st.integers(16, 2048),
    sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=6),
)
def test_the_kept_parts_are_the_outputs_newest_bytes_in_order(cap: int, sizes: list[int]) -> None:
    """Whatever the cap and however the step writes, each file holds at most `cap` bytes and
    the older part then the current one are one unbroken end of the whole output."""
    import tempfile

    chunks = [bytes([65 + i % 26]) * size for i, size in enumerate(sizes)]
    whole = b"".join(chunks)
    script = "; ".join(f"head -c {len(c)} /dev/zero | tr '\\0' '{chr(c[0])}'" for c in chunks)
    with tempfile.TemporaryDirectory() as folder:
        result = keep(Path(folder), "0a0a0a0a", script, cap)
        current = (Path(folder) / "exec-0a0a0a0a.out").read_bytes()
        older_path = Path(folder) / "exec-0a0a0a0a.out.1"
        older = older_path.read_bytes() if older_path.exists() else b""
        dropped = (Path(folder) / "exec-0a0a0a0a.out.dropped").exists()

    assert result["last"] == {"exit": 0}
    assert len(current) <= cap and len(older) <= cap
    assert whole.endswith(older + current)
    assert len(older + current) >= min(len(whole), cap)
    # Output older than the older part went, and only then the marker says so.
    assert dropped == (len(whole) > 2 * cap)


def test_a_fifo_at_the_dropped_marker_never_blocks_the_keeper(tmp_path: Path) -> None:
    # The marker is opened without O_NONBLOCK, so a FIFO at its name (nobody reading) held the
    # keeper in open(): the command's output pipe filled and the command stopped.
    os.mkfifo(tmp_path / "exec-0000feed.out.dropped")
    script = "i=0; while [ $i -lt 100 ]; do printf '%099d\\n' $i; i=$((i+1)); done"

    assert keep(tmp_path, "0000feed", script, 4096)["last"] == {"exit": 0}

    assert (tmp_path / "exec-0000feed.out").read_bytes().endswith(b"%099d\n" % 99)
