"""Image drafts: Apptainer definitions and Dockerfiles checked with line numbers before any job,
spython's converter bugs worked around, what a draft may hold, the build job's copy of the context
(.dockerignore rules) and what the end of a build's output says (Hypothesis where it parses)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rxslurm.daemon.errors import BadRequest
from rxslurm.daemon.images import drafts
from rxslurm.daemon.images.build_result import read_result
from rxslurm.daemon.images.definition import SECTIONS, Problem, base_of, check_definition
from rxslurm.daemon.images.dockerfile import check_dockerfile, convert

GOOD = "Bootstrap: localimage\nFrom: /images/base.sif\n\n%post\n    echo hi\n%runscript\n    id\n"


def sections(definition: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"header": []}
    current = "header"
    for line in definition.splitlines():
        if line.startswith("%"):
            current = line[1:]
            found[current] = []
        elif line.strip():
            found[current].append(line)
    return found


# -- definitions -------------------------------------------------------------------------------


def test_a_good_definition_has_no_problems() -> None:
    assert check_definition(GOOD) == []
    assert base_of(GOOD) == "/images/base.sif"
    assert base_of("Bootstrap: docker\nFrom: python:3.12\n") == "docker://python:3.12"


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("From: x\n%post\n", 1, "must start with Bootstrap"),
        ("Bootstrap: docker\n%post\n  true\n", 1, "needs From:"),
        ("Bootstrap: dokcer\nFrom: x\n", 1, "unknown bootstrap agent 'dokcer'"),
        ("Bootstrap: docker\nFrom: x\nthis is no header\n", 3, "not a header line"),
        ("Bootstrap: docker\nFrom: x\nColour: red\n", 3, "unknown header key Colour:"),
        ("Bootstrap: docker\nFrom: x\n%post\n  true\n%pots\n  x\n", 5, "unknown section %pots"),
        ("Bootstrap: docker\nFrom: x\n%files\n  a b c\n", 4, "'source [destination]'"),
        ("Bootstrap: docker\nFrom: x\n%labels\n  lonely\n", 4, "'KEY value'"),
        ("Bootstrap: docker\nFrom: x\n%files fron a\n", 3, "only 'from STAGE'"),
        ("%post\n  true\n", 1, "before the header"),
        ("", 0, "empty"),
    ],
)
def test_definition_problems_name_their_line(text: str, line: int, words: str) -> None:
    problems = check_definition(text)
    assert problems, text
    assert problems[0].line == line and words in problems[0].message, problems


def test_each_stage_of_a_multi_stage_definition_is_checked() -> None:
    text = (
        "Bootstrap: docker\nFrom: golang\nStage: build\n%post\n  go build\n"
        "Bootstrap: docker\n%files from build\n  /app /app\n"
    )
    assert check_definition(text) == [
        Problem(6, "Bootstrap: docker needs From: (the image to start from)")
    ]


@st.composite
def definitions(draw: st.DrawFn) -> str:
    """Definitions Apptainer takes: a header, then known sections with harmless lines."""
    agent = draw(st.sampled_from(["docker", "localimage", "library", "oras"]))
    lines = [
        f"Bootstrap: {agent}",
        f"From: {draw(st.from_regex(r'[a-z][a-z0-9./:-]{0,30}', fullmatch=True))}",
    ]
    for name in draw(
        st.lists(st.sampled_from(["post", "environment", "runscript", "test", "help"]), max_size=4)
    ):
        lines.append(f"%{name}")
        lines += draw(
            st.lists(st.from_regex(r"    [a-z][a-z0-9 =_./-]{0,40}", fullmatch=True), max_size=3)
        )
    return "\n".join(lines) + "\n"


@settings(max_examples=200)
@given(definitions())
def test_generated_definitions_pass(text: str) -> None:
    assert check_definition(text) == []


@settings(max_examples=200)
@given(definitions(), st.data())
def test_an_unknown_section_is_reported_at_its_line(text: str, data: st.DataObject) -> None:
    lines = text.splitlines()
    at = data.draw(st.integers(min_value=2, max_value=len(lines)))
    name = data.draw(
        st.from_regex(r"[a-z]{3,12}", fullmatch=True).filter(lambda n: n not in SECTIONS)
    )
    lines.insert(at, f"%{name}")
    problems = check_definition("\n".join(lines) + "\n")
    assert Problem(at + 1, f"unknown section %{name} (known: %post, %files, ...)") in problems


@settings(max_examples=300)
@given(st.text(max_size=400))
def test_any_text_gets_an_answer_with_lines_inside_it(text: str) -> None:
    for checker in (check_definition, check_dockerfile):
        problems = checker(text)
        count = len(text.splitlines())
        assert all(0 <= p.line <= count for p in problems), problems


# -- Dockerfiles -------------------------------------------------------------------------------


def test_cmd_without_entrypoint_is_not_run_through_bash_and_there_is_no_startscript() -> None:
    text = 'FROM python:3.12-slim\nWORKDIR /app\nCMD ["python", "app.py", "--name", "a b"]\n'
    parts = sections(convert(text).definition)
    assert parts["header"][:2] == ["Bootstrap: docker", "From: python:3.12-slim"]
    assert parts["runscript"] == [
        "cd /app",
        'if [ "$#" -gt 0 ]; then exec "$@"; fi',
        "exec python app.py --name 'a b'",
    ]
    assert "startscript" not in parts


def test_entrypoint_gets_the_arguments_and_from_as_loses_its_trailing_space() -> None:
    parts = sections(
        convert('FROM ubuntu AS base\nENTRYPOINT ["tini", "--"]\nCMD ["bash"]\n').definition
    )
    assert parts["header"][1] == "From: ubuntu"
    assert parts["runscript"] == [
        'if [ "$#" -gt 0 ]; then exec tini -- "$@"; fi',
        "exec tini -- bash",
    ]


def test_labels_user_healthcheck_chown_and_archives_are_converted_faithfully() -> None:
    text = (
        "FROM alpine\n"
        'LABEL maintainer="Ada L" version=2\n'
        "USER bob\n"
        "HEALTHCHECK CMD true\n"
        "COPY --chown=1:1 a.txt /opt/a.txt\n"
        "ADD deps.tar.gz /opt/deps/\n"
        "RUN echo one && \\\n    echo two\n"
        'RUN ["echo", "a b", "$HOME"]\n'
    )
    converted = convert(text)
    parts = sections(converted.definition)
    assert parts["labels"] == ["maintainer Ada L", "version 2"]
    assert "files" in parts and "a.txt /opt/a.txt" in parts["files"]
    assert not any("--chown" in line for line in parts["files"])
    assert not any(line.startswith("su ") for line in parts["post"])
    assert "test" not in parts  # HEALTHCHECK's stray CMD
    assert "deps.tar.gz /tmp/rx-add-6-0" in parts["files"]
    assert (
        "mkdir -p /opt/deps/ && tar -xf /tmp/rx-add-6-0 -C /opt/deps/ && rm -f /tmp/rx-add-6-0"
        in parts["post"]
    )
    assert "echo one && echo two" in parts["post"]
    assert "echo 'a b' '$HOME'" in parts["post"]  # exec form: words, no shell expansion
    notes = {(n.line, n.message.split(":")[0]) for n in converted.notes}
    assert (3, "USER left out") in notes and (4, "HEALTHCHECK left out") in notes
    assert (5, "COPY --chown left out") in notes


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("FROM alpine\nRUN true\nFOO bar\n", 3, "unknown instruction FOO"),
        ("FROM alpine\nRUN one \\\n  two\nBAD x\n", 4, "unknown instruction BAD"),
        ("RUN apt-get update\nFROM alpine\n", 1, "RUN before the first FROM"),
        ("ARG V=1\nFROM\n", 2, "FROM needs an image"),
        ("# only a comment\n\n", 0, "no FROM"),
        ('FROM alpine\nSHELL ["/bin/bash", "-c"]\n', 2, "SHELL is not supported"),
        ("FROM alpine\nONBUILD RUN x\n", 2, "ONBUILD is not supported"),
        ("FROM alpine\nRUN <<EOF\n", 2, "heredocs"),
        ("FROM alpine\nCOPY --from=build /a /b\n", 2, "COPY --from"),
        ("FROM alpine\nADD https://x.org/a.tgz /a\n", 2, "ADD of a URL"),
        ("FROM alpine\nCOPY onlyone\n", 2, "a source and a destination"),
        ("FROM alpine\nRUN x \\\n", 2, "ends with a line continuation"),
        ("", 0, "empty"),
    ],
)
def test_dockerfile_problems_name_their_line(text: str, line: int, words: str) -> None:
    problems = check_dockerfile(text)
    assert problems, text
    assert problems[0].line == line and words in problems[0].message, problems


INSTRUCTIONS = ["RUN echo hi", "ENV A=1", "WORKDIR /w", "EXPOSE 80", "LABEL a=b", "COPY a /a",
                "ARG X=1", "VOLUME /data", "CMD [\"id\"]"]  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(INSTRUCTIONS), max_size=8), st.data())
def test_an_unknown_instruction_is_reported_at_its_line(
    body: list[str], data: st.DataObject
) -> None:
    lines = ["FROM alpine", *body]
    at = data.draw(st.integers(min_value=1, max_value=len(lines)))
    word = data.draw(
        st.from_regex(r"[A-Z]{3,10}", fullmatch=True).filter(
            lambda w: (
                w
                not in {
                    "FROM",
                    "RUN",
                    "CMD",
                    "ENV",
                    "ADD",
                    "ARG",
                    "USER",
                    "COPY",
                    "LABEL",
                    "SHELL",
                    "EXPOSE",
                    "VOLUME",
                    "WORKDIR",
                    "ONBUILD",
                    "ENTRYPOINT",
                    "MAINTAINER",
                    "STOPSIGNAL",
                    "HEALTHCHECK",
                }
            )
        )
    )
    lines.insert(at, f"{word} x")
    assert Problem(at + 1, f"unknown instruction {word}") in check_dockerfile(
        "\n".join(lines) + "\n"
    )
    # Without it, the Dockerfile converts to a definition Apptainer takes.
    assert check_definition(convert("\n".join(["FROM alpine", *body]) + "\n").definition) == []


# -- what a draft may hold ---------------------------------------------------------------------


@pytest.mark.parametrize("context", ["/abs", "../up", "a/../../b", "", "a\nb"])
def test_a_context_outside_the_workspace_is_refused(context: str) -> None:
    with pytest.raises(BadRequest):
        drafts.check_context(context)


def test_contexts_and_ignore_rules() -> None:
    assert drafts.check_context("src/app/") == "src/app"
    assert drafts.check_context(".") == "."
    assert drafts.check_ignore("# c\n*.log\n!keep.log\n") == "# c\n*.log\n!keep.log\n"
    for bad in ("../x\n", "!\n", "a\x1bb\n"):
        with pytest.raises(BadRequest):
            drafts.check_ignore(bad)


def test_a_draft_body_is_checked_and_capped() -> None:
    assert drafts.parse_body({"kind": "dockerfile", "text": "FROM a\r\n"}, 100, partial=False) == {
        "kind": "dockerfile",
        "text": "FROM a\n",
    }
    for body, words in (
        ({"kind": "oci", "text": "x"}, "kind must be"),
        ({"kind": "dockerfile", "text": "x" * 101}, "too long"),
        ({"kind": "dockerfile", "text": "FROM a\n\u202eRUN x"}, "line 2: a control or bidi"),
        ({"kind": "dockerfile", "text": "  \n"}, "text is empty"),
        ({"kind": "dockerfile", "text": 3}, "must be a string"),
    ):
        with pytest.raises(BadRequest, match=words):
            drafts.parse_body(body, 100, partial=False)
    with pytest.raises(BadRequest, match="nothing to change"):
        drafts.parse_body({}, 100, partial=True)
    for name in ("Main", "-x", "a/b", "", "x" * 64):
        with pytest.raises(BadRequest):
            drafts.check_name("draft name", name)


# -- the end of a build's output ---------------------------------------------------------------


SHA = "0123456789abcdef" * 4


def test_the_last_marker_decides() -> None:
    assert read_result(f"x\nrx-build: succeeded size=12 sha256={SHA}\n", GOOD).size == 12
    forged = f"rx-build: succeeded size=1 sha256={SHA}\nrx-build: failed: no space left\n"
    result = read_result(forged, GOOD)
    assert not result.succeeded and result.reason == "no space left"
    assert "without a result" in read_result("", GOOD).reason


def test_a_failing_post_line_is_found_in_the_definition() -> None:
    definition = "Bootstrap: docker\nFrom: x\n%post\n    apt-get update\n    pip  install  nope\n"
    output = (
        "+ apt-get update\nok\n+ pip install nope\nERROR: no such package\n"
        "FATAL:   While performing build: while running engine: while running %post section: "
        "exit status 1\nrx-build: failed: apptainer build exited with status 255\n"
    )
    reason = read_result(output, definition).reason
    assert reason.startswith("%post failed at line 5: pip install nope (While performing build")
    other = "FATAL:   While performing build: conveyor failed to get: no such image\n"
    assert read_result(other, definition).reason.startswith("While performing build: conveyor")


@settings(max_examples=200)
@given(st.text(max_size=300))
def test_any_output_gives_a_storable_reason(output: str) -> None:
    result = read_result(output, GOOD)
    assert result.succeeded or (result.reason and "\n" not in result.reason)


# -- the build job's copy of the context -------------------------------------------------------


def copier() -> str:
    """The Python part of build.sh (its heredoc), as the job runs it."""
    text = (Path(__file__).parents[2] / "slurm/rxslurm/slurm/templates/build.sh").read_text()
    match = re.search(r"<<'PY'.*?\n(.*?)\nPY\n", text, re.S)
    assert match
    return match.group(1)


def copy_context(tmp_path: Path, files: dict[str, str], ignore: str) -> set[str]:
    src, dest = tmp_path / "src", tmp_path / "dest"
    for name, text in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    (src / "link").symlink_to("/etc/passwd")
    (tmp_path / "ignore").write_text(ignore)
    subprocess.run(
        [sys.executable, "-I", "-S", "-", str(src), str(dest), str(tmp_path / "ignore")],
        input=copier(),
        text=True,
        check=True,
        capture_output=True,
    )
    return {str(p.relative_to(dest)) for p in dest.rglob("*") if not p.is_dir()}


def test_the_context_copy_follows_dockerignore_rules(tmp_path: Path) -> None:
    files = {
        "app.py": "",
        "debug.log": "",
        "keep.log": "",
        "data/big.bin": "",
        "data/small.txt": "",
        "src/deep/x.pyc": "",
        "src/deep/x.py": "",
        ".git/config": "",
    }
    copied = copy_context(
        tmp_path, files, "# comment\n*.log\n!keep.log\ndata\n!data/small.txt\n**/*.pyc\n/.git\n"
    )
    assert copied == {"app.py", "keep.log", "data/small.txt", "src/deep/x.py", "link"}
    # A link is copied as a link, never followed.
    assert (tmp_path / "dest" / "link").is_symlink()


# -- the batch script and the editor -----------------------------------------------------------


def test_build_script_values_are_one_word_each_and_the_definition_survives(tmp_path: Path) -> None:
    import base64
    import shlex

    from rxslurm.daemon.config import ApptainerConfig
    from rxslurm.daemon.ports import BuildRequest
    from rxslurm.daemon.runtime.apptainer import ApptainerRuntime

    context = "/ws/it's $(reboot) `x`"
    definition = "Bootstrap: localimage\nFrom: /b.sif\n%post\n  echo '$HOME' \"x\"\n"
    runtime = ApptainerRuntime(ApptainerConfig(binary="/opt/apptainer/bin/apptainer"))
    script = runtime.build_script(
        BuildRequest("/srv/c/rxbuild-a-1", context, definition, "*.log\n")
    )
    assert f"context={shlex.quote(context)}\n" in script
    assert "apptainer=/opt/apptainer/bin/apptainer\n" in script
    assert "no_https=''\n" in script
    encoded = re.search(r"^definition=(\S+)$", script, re.M)
    assert encoded and base64.b64decode(encoded.group(1)).decode() == definition
    (tmp_path / "build.sh").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "build.sh")], check=False).returncode == 0
    plain = runtime.build_script(BuildRequest("/b", "/c", definition, plain_http=True))
    assert "no_https=--no-https\n" in plain


def test_edit_in_editor_runs_the_editor_with_its_options_and_reads_the_file_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rxslurm.cli.commands_image_build import edit_in_editor

    editor = tmp_path / "ed.sh"
    editor.write_text('#!/bin/sh\n[ "$1" = "--wait" ] && shift\nsed -i s/alpine/debian/ "$1"\n')
    editor.chmod(0o755)
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("EDITOR", f"{editor} --wait")
    assert edit_in_editor("FROM alpine\n", "dockerfile") == "FROM debian\n"
    monkeypatch.setenv("EDITOR", "false")
    with pytest.raises(Exception, match="the editor exited with status 1"):
        edit_in_editor("FROM alpine\n", "dockerfile")


def test_people_see_dev_mode_images_and_problems_in_their_words() -> None:
    from rxslurm.cli import render
    from rxslurm.cli.commands_image_build import image_list_lines, problem_lines, size_text

    project = {"name": "alpha", "members": [], "dev_mode": True}
    assert any(re.fullmatch(r"dev mode:? +on \(image builds allowed\)", line)
               for line in render.project_lines(project))  # fmt: skip
    assert not any("dev mode" in line for line in render.project_lines({"name": "alpha"}))
    image = {"id": 3, "name": "py", "state": "succeeded", "size": 73027584, "sha256": "ab" * 32,
             "base": "docker://python:3.12", "built_by": "rxcarol",
             "created_at": "2026-12-01T00:24:00.000000Z",
             "ended_at": "2026-12-01T00:25:00.000000Z"}  # fmt: skip
    header, row = image_list_lines([image], render.PEOPLE)
    assert header.split() == [
        "ID",
        "NAME",
        "STATE",
        "SIZE",
        "SHA256",
        "BASE",
        "BUILT",
        "BY",
        "WHEN",
    ]
    assert row.split() == [
        "3", "py", "succeeded", "69.6", "MiB", "abababababab", "docker://python:3.12", "rxcarol",
        "2026-12-01", "00:25:00Z",
    ]  # fmt: skip
    assert size_text(None) == "-" and size_text(512) == "512 B"
    check = {"problems": [{"line": 3, "message": "unknown instruction FOO"},
                          {"line": 0, "message": "no FROM"}],
             "notes": [{"line": 4, "message": "USER left out"}]}  # fmt: skip
    assert problem_lines("Dockerfile", check) == [
        "Dockerfile:3: unknown instruction FOO",
        "Dockerfile: no FROM",
        "Dockerfile:4: note: USER left out",
    ]
