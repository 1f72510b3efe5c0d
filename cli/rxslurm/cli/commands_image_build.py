"""`rxctl image draft|build|status|logs|cancel|delete|rename|list`: image drafts and builds.

A draft's file is read here, by rxctl as the person who runs it, and sent to rxd as text: rxd
never reads files from users' folders. Build output is followed as `rxctl logs` follows a
container's (commands_logs.pieces): a piece at a time from where the last one ended.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import click

from rxslurm.cli import render, units
from rxslurm.cli.client import Client
from rxslurm.cli.commands_logs import POLL_S, pieces
from rxslurm.cli.common import (
    api_errors,
    echo,
    echo_lines,
    emit_json,
    json_option,
    list_options,
    project_option,
)
from rxslurm.cli.project_choice import choose_project
from rxslurm.cli.render import size_text
from rxslurm.protocol import routes

KINDS = ("dockerfile", "definition")
# A draft file larger than this is refused here already (rxd's cap is [builds] max_draft_kb).
MAX_FILE_BYTES = 1024 * 1024


def read_file(path: str, what: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise click.ClickException(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise click.ClickException(f"{what} {path} is larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise click.ClickException(f"{what} {path} is not UTF-8 text") from None


def guess_kind(path: str, text: str) -> str | None:
    """dockerfile or definition, from the file's name, else its first instruction or header."""
    name = Path(path).name.lower()
    if name == "dockerfile" or name.startswith("dockerfile.") or name.endswith(".dockerfile"):
        return "dockerfile"
    if name.endswith(".def"):
        return "definition"
    for line in text.splitlines():
        word = line.strip().split(":", 1)[0].split(" ", 1)[0].lower()
        if not word or word.startswith("#"):
            continue
        if word in ("from", "arg"):
            return "dockerfile"
        if word == "bootstrap":
            return "definition"
        return None
    return None


def kind_of(path: str, text: str, given: str | None) -> str:
    kind = given or guess_kind(path, text)
    if kind is None:
        raise click.ClickException(
            f"cannot tell whether {path} is a Dockerfile or a definition; give --kind"
        )
    return kind


def problem_lines(name: str, check: Mapping[str, Any]) -> list[str]:
    """`NAME:LINE: message` for each problem (as compilers say it), then the notes."""
    lines = []
    for problem in check.get("problems") or []:
        at = f"{problem['line']}:" if problem.get("line") else ""
        lines.append(f"{name}:{at} {problem['message']}")
    for note in check.get("notes") or []:
        at = f"{note['line']}:" if note.get("line") else ""
        lines.append(f"{name}:{at} note: {note['message']}")
    return lines


def _draft_route(project: str, name: str) -> str:
    return routes.path(routes.IMAGE_DRAFT, project, name)


def _say_check(answer: Mapping[str, Any], name: str) -> None:
    check = answer["check"]
    for line in problem_lines(name, check):
        echo(line, err=True)
    if not check["ok"]:
        raise SystemExit(1)


def _sources(
    file: str | None, kind: str | None, context: str | None, ignore_file: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if file is not None:
        text = read_file(file, "the draft")
        body["text"] = text
        body["kind"] = kind_of(file, text, kind)
    elif kind is not None:
        body["kind"] = kind
    if context is not None:
        body["context"] = context
    if ignore_file is not None:
        body["ignore"] = read_file(ignore_file, "the exclusions")
    return body


@click.group()
def draft() -> None:
    """Keep build drafts: a Dockerfile or an Apptainer definition, with its build context.

    Example: rxctl image draft create --project alpha main --file Dockerfile
    """


kind_option = click.option(
    "--kind",
    type=click.Choice(KINDS),
    help="dockerfile or definition (default: from the file's name or its first line).",
)
context_option = click.option(
    "--context",
    metavar="DIR",
    help="The build context: a folder of the workspace, relative to it (default: the whole).",
)
ignore_option = click.option(
    "--ignore-file",
    metavar="FILE",
    help="Exclusions from the context, as a .dockerignore file writes them.",
)


@draft.command("create")
@project_option
@click.argument("draft", metavar="DRAFT")
@click.option("--file", "file", required=True, metavar="FILE", help="The Dockerfile or definition.")
@kind_option
@context_option
@ignore_option
@json_option
@click.pass_obj
@api_errors
def draft_create(
    client: Client,
    project: str | None,
    draft: str,
    file: str,
    kind: str | None,
    context: str | None,
    ignore_file: str | None,
    json_: bool,
) -> None:
    """Create a draft from a file (read by rxctl, sent to rxd as text); its problems are shown.

    Example: rxctl image draft create --project alpha main --file Dockerfile --context src
    """
    project = choose_project(client, project)
    body = {"name": draft, **_sources(file, kind, context, ignore_file)}
    answer = client.post(routes.path(routes.IMAGE_DRAFTS, project), body)
    if json_:
        emit_json(answer)
        return
    echo(f"Created draft {draft} of {project} ({answer['kind']}).")
    _say_check(answer, draft)


@draft.command("edit")
@project_option
@click.argument("draft", metavar="DRAFT")
@click.option("--file", "file", metavar="FILE", help="The new text (default: open $EDITOR).")
@kind_option
@context_option
@ignore_option
@json_option
@click.pass_obj
@api_errors
def draft_edit(
    client: Client,
    project: str | None,
    draft: str,
    file: str | None,
    kind: str | None,
    context: str | None,
    ignore_file: str | None,
    json_: bool,
) -> None:
    """Change a draft: from a file, or in $EDITOR when no option is given.

    Example: rxctl image draft edit --project alpha main
    """
    project = choose_project(client, project)
    body = _sources(file, kind, context, ignore_file)
    if not body:
        current = client.get(_draft_route(project, draft))
        edited = edit_in_editor(str(current["text"]), current["kind"])
        if edited == current["text"]:
            echo(f"Draft {draft} is unchanged.")
            return
        body = {"text": edited}
    answer = client.request("PATCH", _draft_route(project, draft), body)
    if json_:
        emit_json(answer)
        return
    echo(f"Updated draft {draft} of {project}.")
    _say_check(answer, draft)


def edit_in_editor(text: str, kind: str) -> str:
    """The text after the user edited it in $VISUAL or $EDITOR (else vi)."""
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    suffix = ".def" if kind == "definition" else ".Dockerfile"
    with tempfile.TemporaryDirectory(prefix="rxctl-draft-") as folder:
        path = Path(folder) / f"draft{suffix}"
        path.write_text(text, encoding="utf-8")
        try:
            # The editor variable may hold options ("code -w"); the file is one more word.
            status = subprocess.run([*shlex.split(editor), str(path)], check=False).returncode
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"cannot run the editor {editor!r}: {exc}") from None
        if status != 0:
            raise click.ClickException(f"the editor exited with status {status}; nothing changed")
        return read_file(str(path), "the edited draft")


@draft.command("show")
@project_option
@click.argument("draft", metavar="DRAFT")
@click.option("--definition", "as_definition", is_flag=True, help="Show the definition it builds.")
@json_option
@click.pass_obj
@api_errors
def draft_show(
    client: Client, project: str | None, draft: str, as_definition: bool, json_: bool
) -> None:
    """Show a draft's text (or, with --definition, the Apptainer definition it converts to).

    Example: rxctl image draft show --project alpha main --definition
    """
    project = choose_project(client, project)
    answer = client.get(_draft_route(project, draft))
    if json_:
        emit_json(answer)
        return
    text = answer["definition"] if as_definition else answer["text"]
    if text is None:
        for line in problem_lines(draft, answer["check"]):
            echo(line, err=True)
        raise SystemExit(1)
    click.echo(render.safe_text(str(text)), nl=not str(text).endswith("\n"))


@draft.command("validate")
@project_option
@click.argument("draft", metavar="DRAFT", required=False)
@click.option("--file", "file", metavar="FILE", help="Check a file instead of a stored draft.")
@kind_option
@json_option
@click.pass_obj
@api_errors
def draft_validate(
    client: Client,
    project: str | None,
    draft: str | None,
    file: str | None,
    kind: str | None,
    json_: bool,
) -> None:
    """Check that a draft converts and builds: problems with their line numbers, exit 1.

    Example: rxctl image draft validate --project alpha main
    """
    if (draft is None) == (file is None):
        raise click.UsageError("give a DRAFT or --file FILE")
    project = choose_project(client, project)
    if file is not None:
        text = read_file(file, "the draft")
        body = {"kind": kind_of(file, text, kind), "text": text}
        answer = client.post(routes.path(routes.IMAGE_DRAFT_CHECK, project), body)
        label = file
    else:
        assert draft is not None
        answer = client.post(routes.path(routes.IMAGE_DRAFT_VALIDATE, project, draft), {})
        label = draft
    if json_:
        emit_json(answer)
        if not answer["check"]["ok"]:
            raise SystemExit(1)
        return
    _say_check(answer, label)
    base = answer["check"].get("base")
    echo(f"{label}: ok" + (f" (from {base})" if base else ""))


@draft.command("delete")
@project_option
@click.argument("draft", metavar="DRAFT")
@json_option
@click.pass_obj
@api_errors
def draft_delete(client: Client, project: str | None, draft: str, json_: bool) -> None:
    """Delete a draft (builds made from it stay).

    Example: rxctl image draft delete --project alpha main
    """
    project = choose_project(client, project)
    answer = client.request("DELETE", _draft_route(project, draft))
    if json_:
        emit_json(answer)
    else:
        echo(f"Deleted draft {draft} of {project}.")


@draft.command("list")
@project_option
@list_options
@json_option
@click.pass_obj
@api_errors
def draft_list(client: Client, project: str | None, json_: bool, shape: render.Shape) -> None:
    """List a project's drafts.

    Example: rxctl image draft list --project alpha
    """
    project = choose_project(client, project)
    answer = client.get(routes.path(routes.IMAGE_DRAFTS, project))
    if json_:
        emit_json(answer)
        return
    rows = [
        (
            d["name"],
            d["kind"],
            d["context"],
            d["size"],
            d["updated_by"],
            render.when(d["updated_at"]),
        )
        for d in answer["drafts"]
    ]
    echo_lines(
        render.table(
            ("NAME", "KIND", "CONTEXT", "BYTES", "CHANGED BY", "CHANGED"),
            rows,
            shape,
            empty=f"no drafts in {project}; create one with: rxctl image draft create",
        )
    )


# -- builds ------------------------------------------------------------------------------------


def _build_route(project: str, build: str) -> str:
    return routes.path(routes.IMAGE_BUILD, project, build)


def image_list_lines(images: Sequence[Mapping[str, Any]], shape: render.Shape) -> list[str]:
    rows = [
        (
            i["id"],
            i["name"],
            i["state"],
            size_text(i.get("size")),
            (i.get("sha256") or "")[:12],
            i.get("base"),
            i.get("built_by"),
            render.when(i.get("ended_at") or i.get("created_at")),
        )
        for i in images
    ]
    return render.table(
        ("ID", "NAME", "STATE", "SIZE", "SHA256", "BASE", "BUILT BY", "WHEN"),
        rows,
        shape,
        empty="no images built yet; build one with: rxctl image build",
    )


def build_status_lines(b: Mapping[str, Any]) -> list[str]:
    items = [
        ("image", f"{b['name']} (build {b['id']}, from draft {b['draft']})"),
        ("state", b["state"]),
        ("reason", b.get("reason")),
        ("job", b.get("job_id")),
        ("node", b.get("node")),
        ("base", b.get("base")),
        ("size", size_text(b.get("size")) if b.get("size") is not None else None),
        ("sha256", b.get("sha256")),
        ("file", b.get("image")),
        ("built by", f"{b['built_by']} as {b['runtime_user']}"),
        ("resources", f"{b['cpus']} CPUs, {b['mem_mb']} MB, {b['time_limit_min']} min"),
        ("partition", b.get("partition")),
        ("submitted", render.when(b["created_at"])),
        ("started", render.when(b["started_at"]) if b.get("started_at") else None),
        ("ended", render.when(b["ended_at"]) if b.get("ended_at") else None),
    ]
    return render.pairs((k, v) for k, v in items if v is not None and v != "")


@click.command()
@project_option
@click.argument("draft_name", metavar="DRAFT")
@click.option("--name", metavar="IMAGE", help="The image's name (default: the draft's).")
@click.option("--partition", metavar="PARTITION", help="Where the build runs ([builds] default).")
@click.option("--cpus", type=click.IntRange(min=1), metavar="N", help="CPUs for the build job.")
@click.option("--mem", "mem_mb", type=units.MEMORY, metavar="SIZE", help="Memory: 8G, 512M.")
@click.option("--time", "time_limit_min", type=units.MINUTES, metavar="TIME", help="Time limit.")
@json_option
@click.pass_obj
@api_errors
def build(
    client: Client,
    project: str | None,
    draft_name: str,
    name: str | None,
    partition: str | None,
    cpus: int | None,
    mem_mb: int | None,
    time_limit_min: int | None,
    json_: bool,
) -> None:
    """Build an image from a draft, as a Slurm job run as the project's runtime user.

    Needs builds turned on by the admin and the project in dev mode (its owner's
    `rxctl project set --project NAME --dev-mode on`); editors and above may build.

    Example: rxctl image build --project alpha main --name py312 --cpus 4
    """
    project = choose_project(client, project)
    body: dict[str, Any] = {"draft": draft_name}
    for key, value in (
        ("name", name),
        ("partition", partition),
        ("cpus", cpus),
        ("mem_mb", mem_mb),
        ("time_limit_min", time_limit_min),
    ):
        if value is not None:
            body[key] = value
    answer = client.post(routes.path(routes.IMAGE_BUILDS, project), body)
    if json_:
        emit_json(answer)
        return
    job = f" as job {answer['job_id']}" if answer.get("job_id") else ""
    echo(f"Build {answer['id']} of image {answer['name']} is {answer['state']}{job}.")
    echo(f"Follow it with: rxctl image logs --project {project} -f {answer['id']}")


@click.command("list")
@project_option
@list_options
@json_option
@click.pass_obj
@api_errors
def list_(client: Client, project: str | None, json_: bool, shape: render.Shape) -> None:
    """List a project's images and builds: state, size, digest, base, who built it and when.

    Example: rxctl image list --project alpha
    """
    project = choose_project(client, project)
    answer = client.get(routes.path(routes.IMAGE_BUILDS, project))
    if json_:
        emit_json(answer)
    else:
        echo_lines(image_list_lines(answer["images"], shape))


@click.command()
@project_option
@click.argument("build_ref", metavar="BUILD")
@json_option
@click.pass_obj
@api_errors
def status(client: Client, project: str | None, build_ref: str, json_: bool) -> None:
    """Show a build (by its id or its image's name): state, and why it failed.

    Example: rxctl image status --project alpha py312
    """
    project = choose_project(client, project)
    answer = client.get(_build_route(project, build_ref))
    if json_:
        emit_json(answer)
    else:
        echo_lines(build_status_lines(answer))


@click.command()
@project_option
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the build ends.")
@click.argument("build_ref", metavar="BUILD")
@json_option
@click.pass_obj
@api_errors
def logs(client: Client, project: str | None, follow: bool, build_ref: str, json_: bool) -> None:
    """Show a build's output (its job's: the copy, Apptainer's build messages).

    Example: rxctl image logs --project alpha -f py312
    """
    if json_ and follow:
        raise click.UsageError("--json and --follow cannot be used together")
    project = choose_project(client, project)
    ref = build_ref

    def fetch(_job: int | None, offset: int | None) -> Mapping[str, Any]:
        query = f"?{urlencode({'offset': offset})}" if offset is not None else ""
        answer: dict[str, Any] = client.get(
            routes.path(routes.IMAGE_BUILD_LOGS, project, ref) + query
        )
        # The reader of `rxctl logs` follows while a job lives; a build's job lives while the
        # build is queued or building.
        answer["live"] = answer["state"] in ("queued", "building")
        return answer

    first = fetch(None, None)
    if json_:
        emit_json(first)
        return
    try:
        # A build just asked for may not have its job recorded yet: following waits for it.
        while first["job_id"] is None and follow and first["live"]:
            time.sleep(POLL_S)
            first = fetch(None, None)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    if first["job_id"] is None:
        echo(f"build {first['id']} has no job ({first['state']})", err=True)
        return
    if first.get("missing") and not follow:
        echo(f"job {first['job_id']} has written no output yet", err=True)
    if first["start"] > 0:
        echo(f"the first {first['start']} bytes of the build's output are not shown", err=True)
    last = first
    try:
        for answer in pieces(fetch, first, follow, time.sleep):
            if answer["text"]:
                click.echo(render.safe_text(str(answer["text"]).expandtabs()), nl=False)
            last = answer
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    if follow:
        echo(f"build {last['id']} is {last['state']}", err=True)


@click.command()
@project_option
@click.argument("build_ref", metavar="BUILD")
@json_option
@click.pass_obj
@api_errors
def cancel(client: Client, project: str | None, build_ref: str, json_: bool) -> None:
    """Cancel a queued or running build: its job ends, the build is cancelled.

    Example: rxctl image cancel --project alpha py312
    """
    project = choose_project(client, project)
    answer = client.post(routes.path(routes.IMAGE_BUILD_CANCEL, project, build_ref), {})
    if json_:
        emit_json(answer)
    else:
        echo(f"Cancelled build {answer['id']} ({answer['name']}).")


@click.command()
@project_option
@click.argument("build_ref", metavar="BUILD")
@json_option
@click.pass_obj
@api_errors
def delete(client: Client, project: str | None, build_ref: str, json_: bool) -> None:
    """Delete a build that has ended: its record and its files (the image too).

    Example: rxctl image delete --project alpha py312
    """
    project = choose_project(client, project)
    answer = client.request("DELETE", _build_route(project, build_ref))
    if json_:
        emit_json(answer)
    else:
        echo(f"Deleted build {answer['deleted']} ({answer['name']}) and its files.")


@click.command()
@project_option
@click.argument("build_ref", metavar="BUILD")
@click.argument("new_name", metavar="NEW")
@json_option
@click.pass_obj
@api_errors
def rename(client: Client, project: str | None, build_ref: str, new_name: str, json_: bool) -> None:
    """Rename a queued or succeeded image.

    Example: rxctl image rename --project alpha py312 py312-cuda
    """
    project = choose_project(client, project)
    answer = client.request("PATCH", _build_route(project, build_ref), {"name": new_name})
    if json_:
        emit_json(answer)
    else:
        echo(f"Build {answer['id']} is now image {answer['name']}.")
