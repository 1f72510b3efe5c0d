"""Parsing squeue/sacct/sinfo output: real Slurm 22.05 captures and hand-written newer shapes.

See tests/fixtures/slurm/README.md for where each fixture comes from.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rxslurm.slurm import jobs
from rxslurm.slurm.adapter import SACCT_FIELDS, parse_sacct_text, parse_sinfo_nodes
from rxslurm.slurm.jobs import (
    ParseError,
    gpus_in_gres,
    normalize_gres,
    parse_queue_text,
    parse_sacct_json,
    parse_squeue_json,
    parse_time_limit,
    queue_format,
    queue_marker,
    state_from,
)

FIXTURES = Path(__file__).parent / "fixtures" / "slurm"
NONCE = "0123456789abcdef"  # the nonce the text fixtures were captured with


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


# ----------------------------------------------------------------- squeue --json, Slurm 22.05


def test_squeue_22_05_active_jobs() -> None:
    found = parse_squeue_json(fixture("squeue-22.05-active.json"))
    assert sorted(found) == list(range(19, 27))
    run = found[19]
    assert (run.name, run.user, run.state, run.reason) == (
        "rx-fixture-run",
        "rxalice",
        "RUNNING",
        "None",
    )
    assert run.comment == "rx:c|with pipes | and  spaces"
    assert run.time_limit_min == 60
    assert run.partition == "cpu" and run.nodes == "n1"
    assert run.start_time is not None and run.submit_time is not None
    assert run.exit_code is None  # still running: no exit status yet
    assert run.is_active and not run.is_finished

    gpu = found[20]
    assert (gpu.partition, gpu.gres, gpu.gpus) == ("gpu", "gpu:a100:2", 2)
    assert gpu.gres_detail == ("gpu:a100:2(IDX:0-1)",)
    assert gpu.time_limit_min is None  # unlimited is null in 22.05

    assert (found[22].state, found[22].reason, found[22].user) == ("PENDING", "Dependency", "rxbob")
    assert found[22].start_time is None and found[22].nodes == ""
    assert (found[23].reason, found[23].time_limit_min) == ("JobHeldUser", 2 * 1440 + 30)
    assert (found[26].state, found[26].reason, found[26].gres) == (
        "PENDING",
        "Resources",
        "gpu:a100:2",
    )
    assert found[26].gpus == 2  # asked for, from tres_req_str


def test_squeue_22_05_finished_jobs_exit_codes_and_signals() -> None:
    found = parse_squeue_json(fixture("squeue-22.05-finished.json"))
    assert (found[4].state, found[4].exit_code, found[4].signal) == ("FAILED", 7, None)
    assert (found[20].state, found[20].exit_code) == ("FAILED", 5)
    assert (found[19].state, found[19].exit_code) == ("COMPLETED", 0)
    assert (found[7].state, found[7].exit_code, found[7].signal) == ("CANCELLED", 0, 15)
    assert found[23].state == "CANCELLED" and found[23].start_time is not None
    assert all(j.is_finished for i, j in found.items() if i != 13)
    assert found[7].base_state == "CANCELLED"


def test_squeue_22_05_name_and_comment_with_newline_and_pipe() -> None:
    evil = parse_squeue_json(fixture("squeue-22.05-finished.json"))[13]
    assert evil.name == "evil\nname|x"
    assert evil.comment == "line1\nline2|rx|"


def test_squeue_22_05_completing_is_shown_like_squeue_does() -> None:
    found = parse_squeue_json(fixture("squeue-22.05-completing.json"))
    completing = found[8]
    assert completing.state == "COMPLETING"
    assert completing.base_state == ""  # 22.05 prints only the winning name
    assert completing.is_active and not completing.is_finished
    assert (found[12].state, found[12].reason) == ("PENDING", "Dependency")


# ----------------------------------------------------------------- squeue --json, newer Slurm


def test_squeue_v0_0_39_lists_and_number_objects() -> None:
    found = parse_squeue_json(fixture("squeue-v0.0.39.json"))
    running = found[501]
    assert (running.state, running.base_state, running.flags) == ("RUNNING", "RUNNING", ())
    assert running.start_time == 1795444485 and running.submit_time == 1795444480
    assert running.time_limit_min is None  # {"infinite": true}
    assert running.comment == "rx:c|pipe | and  spaces"
    assert (running.gres, running.gpus) == ("gpu:a100:2", 2)
    pending = found[502]
    assert (pending.state, pending.reason, pending.time_limit_min) == ("PENDING", "Dependency", 90)
    assert pending.start_time is None and pending.end_time is None
    ending = found[503]
    assert (ending.state, ending.base_state, ending.flags) == (
        "COMPLETING",
        "FAILED",
        ("COMPLETING",),
    )
    assert (ending.exit_code, ending.user) == (7, "rxbob")


def test_squeue_v0_0_40_exit_code_objects_and_gres_slash_prefix() -> None:
    found = parse_squeue_json(fixture("squeue-v0.0.40.json"))
    assert (found[601].gres, found[601].gpus, found[601].exit_code) == ("gpu:a100:2", 2, None)
    assert (found[602].gres, found[602].gpus) == ("gpu:1", 1)
    cancelled = found[603]
    assert (cancelled.state, cancelled.exit_code, cancelled.signal) == ("CANCELLED", 0, 9)


# ----------------------------------------------------------------- sacct --json


def test_sacct_22_05_latest_record_wins_when_ids_repeat() -> None:
    found = parse_sacct_json(fixture("sacct-22.05.json"))
    assert sorted(found) == [4, *range(19, 27)]
    assert found[4].submit_time == 1795444485  # the later of the two job 4 records


def test_sacct_22_05_fields() -> None:
    found = parse_sacct_json(fixture("sacct-22.05.json"))
    assert (found[19].state, found[19].user, found[19].exit_code) == ("COMPLETED", "rxalice", 0)
    assert (found[20].gres, found[20].gpus, found[20].partition) == ("gpu:2", 2, "gpu")
    assert (found[23].state, found[23].nodes, found[23].time_limit_min) == ("CANCELLED", "", 2910)
    assert found[22].user == "rxbob"
    assert found[19].time_limit_min == 60
    # Slurm 22.05's sacct --json reports exit 0 for jobs that exited 5 and 7; this is why
    # SlurmCli.history() reads sacct's text format instead (see test_sacct_text_exit_codes).
    assert (found[20].state, found[20].exit_code) == ("FAILED", 0)


def test_sacct_v0_0_40() -> None:
    found = parse_sacct_json(fixture("sacct-v0.0.40.json"))
    done = found[701]
    assert (done.state, done.exit_code, done.time_limit_min) == ("COMPLETED", 0, None)
    assert (done.gres, done.gpus) == ("gpu:a100:2", 2)  # the typed entry wins
    assert done.comment == "rx:c|pipe"
    failed = found[702]
    assert (failed.state, failed.exit_code, failed.reason, failed.time_limit_min) == (
        "FAILED",
        7,
        "NonZeroExitCode",
        60,
    )
    cancelled = found[703]
    assert (cancelled.state, cancelled.signal, cancelled.nodes) == ("CANCELLED", 15, "")
    assert cancelled.start_time is None and cancelled.gpus == 1


@pytest.mark.parametrize("bad", ["", "not json", "[]", '{"jobs": 3}', "[" * 100_000])
def test_malformed_json_is_a_parse_error(bad: str) -> None:
    with pytest.raises(ParseError):
        parse_squeue_json(bad)
    with pytest.raises(ParseError):
        parse_sacct_json(bad)


@pytest.mark.parametrize("parse", [parse_squeue_json, parse_sacct_json])
def test_json_jobs_that_cannot_be_read_are_skipped_not_fatal(parse: object) -> None:
    text = json.dumps(
        {
            "jobs": [
                {"name": "no id"},
                {"job_id": "²"},
                {"job_id": 7, "gres_detail": 5, "time_limit": 1e400},
                3,
                {"job_id": 8, "name": "rx-ok", "user_name": "rxalice", "job_state": "PENDING"},
            ]
        }
    ).replace("1e400", "Infinity")
    found = parse(text)
    assert sorted(found) == [7, 8]
    assert found[7].time_limit_min is None and found[7].gres_detail == ()
    assert len(found.skipped) == 3
    assert all(len(s.record) <= 160 for s in found.skipped)


def test_squeue_json_repeated_id_is_unknown() -> None:
    job = {"job_id": 5, "name": "rx-a", "job_state": "RUNNING"}
    found = parse_squeue_json(json.dumps({"jobs": [job, job]}))
    assert 5 not in found
    assert found.unknown_ids() == {5}


# ----------------------------------------------------------------- squeue text (queue())


def test_queue_text_agrees_with_json_captured_at_the_same_moment() -> None:
    text = parse_queue_text(fixture("squeue-22.05-active.txt"), NONCE)
    json_jobs = parse_squeue_json(fixture("squeue-22.05-active.json"))
    for job_id, expected in json_jobs.items():
        got = text[job_id]
        for field in (
            "name",
            "user",
            "state",
            "reason",
            "nodes",
            "comment",
            "partition",
            "gres",
            "gpus",
            "submit_time",
            "time_limit_min",
        ):
            assert getattr(got, field) == getattr(expected, field), (job_id, field)
        if expected.state == "RUNNING":
            assert got.start_time == expected.start_time


def test_queue_text_finished_jobs() -> None:
    found = parse_queue_text(fixture("squeue-22.05-finished.txt"), NONCE)
    assert (found[20].state, found[20].exit_code, found[20].gres) == ("FAILED", 5, "gpu:a100:2")
    assert (found[4].exit_code, found[7].signal, found[7].state) == (7, 15, "CANCELLED")
    assert found[19].comment == "rx:c|with pipes | and  spaces"
    assert found[19].time_limit_min == 60
    evil = found[13]
    assert (evil.name, evil.comment) == ("evil\nname|x", "line1\nline2|rx|")
    assert found[5].comment == ""  # "(null)" means no comment


def _record(
    job_id: int, name: str, comment: str, nonce: str = NONCE, state: str = "RUNNING"
) -> str:
    marker = queue_marker(nonce)
    fixed = [str(job_id), state, "None", "rxalice", "cpu", "n1", "N/A", "UNLIMITED"]
    fixed += ["1795444485", "1795444486", "NONE", "0"]
    return "|".join(fixed) + "|" + name + marker + comment + marker + "\n"


def test_queue_text_free_text_cannot_forge_fields_or_records() -> None:
    # A comment that imitates a whole record, with another nonce's marker and a newline.
    forged = _record(999, "rx-victim", "x", nonce="f" * 16, state="COMPLETED")
    hostile_comment = "a | b |" + forged.rstrip("\n") + "\n2|RUNNING|"
    text = _record(1, "rx-a|b", hostile_comment) + _record(2, "rx-2", "")
    found = parse_queue_text(text, NONCE)
    assert sorted(found) == [1, 2]
    assert found[1].name == "rx-a|b"
    assert found[1].comment == hostile_comment
    assert found[1].state == "RUNNING"


def test_queue_text_cut_short_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        parse_queue_text(_record(1, "a", "b") + _record(2, "a", "b").rstrip("\n"), NONCE)


@pytest.mark.parametrize(
    ("bad", "job_id"),
    [
        ("1|RUNNING|None" + queue_marker(NONCE) + "\n", 1),  # too few fields
        (_record(1, "a", "b").replace("1|", "x|", 1), None),  # no job id
        (_record(1, "a", "b").replace("1|", "²|", 1), None),  # a digit, but not 0-9
        (_record(1, "a", "b").replace("|rx" + NONCE + "|", "|", 1), 1),  # name/comment lost
        (_record(1, "a", "b").replace("|1795444485|", "|yesterday|", 1), 1),  # a time
        (_record(1, "a", "b").replace("|UNLIMITED|", "|1:2:3:4|", 1), 1),  # a time limit
        (_record(1, "a", "b").replace("|rxalice|", "|rx alice|", 1), 1),  # a user
        (_record(1, "a", "b").replace("|RUNNING|", "|running hot|", 1), 1),  # a state
        (_record(1, "a", "b").replace("|0|a", "|²|a", 1), 1),  # an exit code
        (_record(1, "a", "b") + _record(1, "a", "b"), 1),  # the same job twice
    ],
)
def test_queue_text_record_that_does_not_fit_is_skipped_and_others_read(
    bad: str, job_id: int | None
) -> None:
    found = parse_queue_text(_record(7, "rx-ok", "c") + bad + _record(8, "rx-ok", ""), NONCE)
    assert sorted(found) == [7, 8]
    assert [s.job_id for s in found.skipped] == [job_id]
    assert found.unknown_ids() == ({job_id} if job_id else set())


def test_queue_text_a_pending_array_printed_per_task_is_unknown_not_fatal() -> None:
    # squeue --array prints a pending array once per task under the array's job id.
    text = _record(31, "rx-arr", "", state="PENDING") * 2 + _record(32, "rx-ok", "")
    found = parse_queue_text(text, NONCE)
    assert sorted(found) == [32]
    assert found.unknown_ids() == {31}
    assert "appears 2 times" in found.skipped[0].reason


def test_queue_text_time_limit_over_a_year_is_unlimited() -> None:
    # squeue prints INVALID for limits over 365 days (_print_secs).
    text = _record(5, "rx-long", "").replace("|UNLIMITED|", "|INVALID|")
    found = parse_queue_text(text, NONCE)
    assert found[5].time_limit_min is None and not found.skipped


def test_queue_text_reads_only_names_with_the_prefix() -> None:
    # Records of other jobs are not read past their name: their odd fields cost nothing.
    other = _record(9, "wrap", "").replace("|UNLIMITED|", "|whatever|").replace("9|", "x|", 1)
    text = other + _record(3, "rx-a", "c") + _record(4, "not-rx", "c")
    found = parse_queue_text(text, NONCE, name_prefix="rx-")
    assert sorted(found) == [3]
    assert found.skipped == []


def test_queue_text_empty_queue() -> None:
    assert parse_queue_text("", NONCE) == {}


def test_queue_format_puts_free_text_last_behind_the_marker() -> None:
    fmt = queue_format(NONCE)
    assert fmt.startswith("JobID:0|,State:0|,")
    assert fmt.endswith(f"Name:0|rx{NONCE}|,Comment:0|rx{NONCE}|")
    with pytest.raises(ValueError):
        queue_format("not-hex")


# ----------------------------------------------------------------- sacct text (history())


def test_sacct_text_exit_codes() -> None:
    found = parse_sacct_text(fixture("sacct-22.05.txt"))
    assert (found[4].state, found[4].exit_code) == ("FAILED", 7)
    assert (found[20].state, found[20].exit_code, found[20].gpus) == ("FAILED", 5, 2)
    assert (found[19].state, found[19].exit_code, found[19].user) == ("COMPLETED", 0, "rxalice")
    assert found[19].time_limit_min == 60 and found[19].tres.startswith("billing=1")
    assert found[22].reason == "Dependency"


def test_sacct_text_odd_values() -> None:
    found = parse_sacct_text(fixture("sacct-22.05.txt"))
    held = found[23]
    assert (held.state, held.nodes, held.start_time, held.time_limit_min) == (
        "CANCELLED",
        "",
        None,
        2910,
    )
    evil = found[13]  # its name has a newline and a "|": sacct is not asked for names
    assert (evil.name, evil.comment) == ("", "")
    assert (evil.state, evil.time_limit_min, evil.exit_code) == ("PENDING", None, None)


def _sacct_line(job_id: str = "77", limit: str = "UNLIMITED") -> str:
    return "|".join(
        [job_id, "CANCELLED by 2002", "None", "rxbob", "rxtest", "cpu", "n3", "cpu=1", "cpu=1"]
        + [limit]
        + ["100", "101", "102", "0:15"]
    )


def test_sacct_text_cancelled_by_user_and_signal() -> None:
    found = parse_sacct_text(_sacct_line() + "\n")
    assert (found[77].state, found[77].signal, found[77].exit_code) == ("CANCELLED", 15, 0)


def test_sacct_asks_for_no_free_text_so_no_record_can_be_forged() -> None:
    # A name or comment could hold "|" and newlines; with them left out, each line is a record
    # whose every field Slurm fills from a closed vocabulary.
    assert not {"JobName", "Comment", "AdminComment", "WorkDir"} & set(SACCT_FIELDS)


@pytest.mark.parametrize(
    ("bad", "job_id"),
    [
        ("sacct: something unexpected", None),
        ("12|COMPLETED", 12),
        (_sacct_line(job_id="²"), None),
        (_sacct_line(job_id="12", limit="forever"), 12),
        (_sacct_line(job_id="99999999999999999999"), None),
    ],
)
def test_sacct_text_line_that_does_not_fit_is_skipped(bad: str, job_id: int | None) -> None:
    found = parse_sacct_text(_sacct_line() + "\n" + bad + "\n" + _sacct_line("78") + "\n")
    assert sorted(found) == [77, 78]
    assert [s.job_id for s in found.skipped] == [job_id]


# ----------------------------------------------------------------- sinfo (partitions())


def test_sinfo_partitions() -> None:
    parts = parse_sinfo_nodes(fixture("sinfo-22.05.txt"))
    assert set(parts) == {"cpu", "gpu"}
    cpu, gpu = parts["cpu"], parts["gpu"]
    assert cpu.default and not gpu.default
    assert gpu.nodes == ("n1", "n2", "n3")
    assert (gpu.max_gpus_per_node, gpu.gpu_type, gpu.gpu_types) == (2, "a100", ("a100",))
    assert (gpu.total_cpus, gpu.max_cpus_per_node, gpu.max_mem_mb_per_node) == (6, 2, 4000)
    assert gpu.max_time_min is None and gpu.state == "up"
    assert gpu.node_states["n1"] == "idle"


def test_sinfo_mixed_gpu_types_prefer_the_biggest_node() -> None:
    text = (
        "a1|mix|up|1-00:00:00|8|64000|gpu:v100:1|idle\n"
        "a2|mix|up|1-00:00:00|16|128000|gpu:h100:4(S:0-1),gpu:v100:1|mixed\n"
        "a3|mix|up|1-00:00:00|4|8000|(null)|down*\n"
    )
    mix = parse_sinfo_nodes(text)["mix"]
    assert (mix.max_gpus_per_node, mix.gpu_types, mix.max_time_min) == (5, ("h100", "v100"), 1440)
    assert (mix.max_cpus_per_node, mix.max_mem_mb_per_node, mix.default) == (16, 128000, False)


def test_sinfo_garbage_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        parse_sinfo_nodes("n1|cpu\n")


# ----------------------------------------------------------------- small helpers


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        ("UNLIMITED", None),
        ("infinite", None),
        ("30:00", 30),
        ("1:00:00", 60),
        ("01:30:00", 90),
        ("2-00:30:00", 2910),
        ("1:00:30", 61),
        ("45", 45),
        ("INVALID", None),  # squeue, for limits over a year
        ("400-00:00:00", 576000),
        ("2-12", 3600),  # days-hours
        ("2-00:30", 2910),  # days-hours:minutes
    ],
)
def test_parse_time_limit(text: str, minutes: int | None) -> None:
    assert parse_time_limit(text) == minutes


@pytest.mark.parametrize("text", ["1:2:3:4", "²", "-5", "1-", "soon", "1" * 40])
def test_parse_time_limit_refuses_what_slurm_never_prints(text: str) -> None:
    with pytest.raises(ParseError):
        parse_time_limit(text)


@pytest.mark.parametrize(
    ("raw", "gres", "gpus"),
    [
        ("gres:gpu:a100:2", "gpu:a100:2", 2),
        ("gres/gpu:1", "gpu:1", 1),
        ("gpu", "gpu", 1),
        ("N/A", "", 0),
        ("(null)", "", 0),
        ("gres:gpu:a100:1,gres:nvme:1", "gpu:a100:1,nvme:1", 1),
    ],
)
def test_gres_normalisation(raw: str, gres: str, gpus: int) -> None:
    assert normalize_gres(raw) == gres
    assert gpus_in_gres(raw) == gpus


@pytest.mark.parametrize(
    ("value", "shown", "base", "flags"),
    [
        ("RUNNING", "RUNNING", "RUNNING", ()),
        ("COMPLETING", "COMPLETING", "", ("COMPLETING",)),
        (["COMPLETED", "COMPLETING"], "COMPLETING", "COMPLETED", ("COMPLETING",)),
        (["PENDING", "REQUEUED"], "REQUEUED", "PENDING", ("REQUEUED",)),
        (
            ["RUNNING", "SIGNALING", "CONFIGURING"],
            "CONFIGURING",
            "RUNNING",
            ("SIGNALING", "CONFIGURING"),
        ),
        ([], "", "", ()),
    ],
)
def test_state_from_follows_slurms_flag_priority(
    value: object, shown: str, base: str, flags: tuple[str, ...]
) -> None:
    assert state_from(value) == (shown, base, flags)


def test_unset_and_infinite_numbers_are_none() -> None:
    assert jobs._number({"set": False, "infinite": False, "number": 5}) is None
    assert jobs._number({"set": True, "infinite": True, "number": 0}) is None
    assert jobs._number(4294967294) is None
    assert jobs._number("12") == 12
    assert jobs._timestamp(0) is None


def test_ids_argument() -> None:
    assert jobs.ids_argument([3, 1, 3, 2]) == "1,2,3"
    with pytest.raises(ValueError):
        jobs.ids_argument([0])
