"""Parsing squeue/sacct/sinfo output: real Slurm 22.05 captures and hand-written newer shapes.

See tests/fixtures/slurm/README.md for where each fixture comes from.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rxslurm.slurm import jobs
from rxslurm.slurm.adapter import SACCT_FIELDS, parse_sacct_text, parse_sinfo_nodes
from rxslurm.slurm.jobs import (
    ParseError,
    gpus_in_gres,
    normalize_gres,
    parse_queue_text,
    parse_time_limit,
    queue_format,
    queue_marker,
    state_from,
)

FIXTURES = Path(__file__).parent / "fixtures" / "slurm"
NONCE = "0123456789abcdef"  # the nonce the text fixtures were captured with


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


# ----------------------------------------------------------------- squeue text (queue())


def test_queue_text_22_05_active_jobs() -> None:
    found = parse_queue_text(fixture("squeue-22.05-active.txt"), NONCE, name_prefix="rx-fixture-")
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
    assert gpu.time_limit_min is None  # UNLIMITED

    assert (found[22].state, found[22].reason, found[22].user) == ("PENDING", "Dependency", "rxbob")
    assert found[22].start_time is None and found[22].nodes == ""
    assert (found[23].reason, found[23].time_limit_min) == ("JobHeldUser", 2 * 1440 + 30)
    assert (found[26].state, found[26].reason, found[26].gres) == (
        "PENDING",
        "Resources",
        "gpu:a100:2",
    )
    assert found[26].gpus == 2  # asked for, per node


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
        ("completed", "COMPLETED", "COMPLETED", ()),
        ("COMPLETING", "COMPLETING", "", ("COMPLETING",)),  # a flag shown instead of the state
        ("", "", "", ()),
    ],
)
def test_state_from_tells_base_states_from_flags(
    value: str, shown: str, base: str, flags: tuple[str, ...]
) -> None:
    assert state_from(value) == (shown, base, flags)


def test_slurm_sentinel_numbers_are_none() -> None:
    assert jobs._number("4294967294") is None
    assert jobs._number("18446744073709551615") is None
    assert jobs._number("12") == 12


def test_ids_argument() -> None:
    assert jobs.ids_argument([3, 1, 3, 2]) == "1,2,3"
    with pytest.raises(ValueError):
        jobs.ids_argument([0])
