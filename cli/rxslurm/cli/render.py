"""Text output for people: short aligned tables and key/value blocks, read at a glance.

Everything here turns API answers (plain dicts) into lines; `--json` bypasses it entirely.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

PENDING_NOTE = "new settings apply on the next start"
NO_PROJECTS = "no projects yet; create one with: rxctl project create NAME"

# What a terminal would act on rather than show: C0 and C1 controls and DEL (escape sequences,
# carriage returns that overwrite a line), Unicode's bidirectional controls (which reorder what
# follows, "Trojan Source"), and the line and paragraph separators. Any project member can put such
# characters in what rxd stores (an image reference, a display name, a job's last error), and
# others read it here.
_BIDI_AND_SEPARATORS = "\\u061c\\u200e\\u200f\\u2028-\\u202e\\u2066-\\u2069"
_UNSAFE = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f{_BIDI_AND_SEPARATORS}]")
_UNSAFE_KEEP_NL = re.compile(f"[\\x00-\\x09\\x0b-\\x1f\\x7f-\\x9f{_BIDI_AND_SEPARATORS}]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(text: str) -> str:
    """One line of text from rxd, with everything a terminal would act on shown escaped."""
    return _UNSAFE.sub(_escape, text)


def safe_text(text: str) -> str:
    """Like safe(), but newlines stay: for several lines printed at once."""
    return _UNSAFE_KEEP_NL.sub(_escape, text)


def cell(value: Any) -> str:
    """One value as table text: absent and empty values show as "-"."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        return " ".join(f"{safe(str(k))}={cell(v)}" for k, v in sorted(value.items())) or "-"
    if isinstance(value, list | tuple):
        return ",".join(cell(v) for v in value) or "-"
    return safe(str(value))


def when(timestamp: Any) -> str:
    """An API timestamp to the second, still marked UTC: "2024-05-01 12:34:56Z"."""
    from datetime import datetime  # only tables with times need it: keep it off start-up

    try:
        moment = datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
    except ValueError:
        return cell(timestamp)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def detail(value: Any) -> str:
    """An audit event's detail: `key=value` pairs, nested values as compact JSON."""
    if not isinstance(value, Mapping):
        return cell(value)
    parts = []
    for key, item in sorted(value.items()):
        text = (
            json.dumps(item, separators=(",", ":"))
            if isinstance(item, Mapping | list)
            else cell(item)
        )
        parts.append(f"{key}={text}")
    return " ".join(parts) or "-"


class BadFormat(ValueError):
    """--format names a column the list does not have."""


class Shape:
    """A list's `--noheader` and `--format`, as squeue's `-h` and `-o`: which columns, in which
    order, and whether the header line and the "nothing here" sentence are shown."""

    def __init__(self, noheader: bool = False, columns: str | None = None) -> None:
        self.noheader = noheader
        self.columns = [c.strip() for c in columns.split(",")] if columns else None

    def empty(self, sentence: str) -> list[str]:
        return [] if self.noheader else [sentence]


PEOPLE = Shape()


def column_key(header: str) -> str:
    """`LINUX USER` -> `linux_user`: how --format names a column."""
    return header.lower().replace(" ", "_")


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    shape: Shape = PEOPLE,
    empty: str | None = None,
) -> list[str]:
    """Left-aligned columns two spaces apart; the last column is not padded. A list with no
    rows is the sentence `empty` instead, when one is given."""
    text_rows = [[cell(v) for v in row] for row in rows]
    if empty is not None and not text_rows:
        return shape.empty(empty)
    if shape.columns is not None:
        keys = [column_key(h) for h in headers]
        unknown = [c for c in shape.columns if column_key(c) not in keys]
        if unknown:
            raise BadFormat(f"no column {unknown[0]!r}; the columns are: {', '.join(keys)}")
        picked = [keys.index(column_key(c)) for c in shape.columns]
        headers = [headers[i] for i in picked]
        text_rows = [[row[i] for i in picked] for row in text_rows]
    # Without a header, the columns are as wide as their values.
    widths = [0 if shape.noheader else len(h) for h in headers]
    for row in text_rows:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    lines = []
    for row in [list(headers), *text_rows]:
        padded = [value.ljust(widths[i]) for i, value in enumerate(row[:-1])]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return lines[1:] if shape.noheader else lines


def pairs(items: Iterable[tuple[str, Any]], indent: str = "") -> list[str]:
    """`key  value` lines with the values aligned."""
    items = [(key, cell(value)) for key, value in items]
    width = max((len(key) for key, _ in items), default=0)
    return [f"{indent}{key.ljust(width)}  {value}".rstrip() for key, value in items]


def setting_value(key: str, value: Any, *, effective: bool = False) -> str:
    """A setting as people read it: units, "no GPU", and 0/"" as the deployment default."""
    # Only `project show` needs the settings' table: `rxctl status` starts without it.
    from rxslurm.protocol.settings import BY_NAME

    setting = BY_NAME.get(key)
    unit = setting.unit if setting else ""
    if key == "gpus" and value == 0:
        return "none"
    if value in (0, "", None):
        # In the settings 0/"" means "the deployment default"; an effective 0 means "no limit".
        return ("none" if unit else "-") if effective else "default"
    return f"{value} {unit}" if unit else cell(value)


def container_line(container: Mapping[str, Any] | None) -> str:
    if not container:
        return "none (not enabled)"
    state = cell(container.get("state"))
    extra = [
        f"{label} {cell(container[key])}"
        for key, label in (("job_id", "job"), ("node", "on"), ("reason", "reason"))
        if container.get(key)
    ]
    return state + (f" ({', '.join(extra)})" if extra else "")


def project_lines(project: Mapping[str, Any]) -> list[str]:
    """The whole of `rxctl project show`: who, where, settings, members."""
    from rxslurm.protocol.settings import SETTINGS

    runtime = project.get("runtime_user")
    run_as = cell(project.get("run_as"))
    lines = pairs(
        [
            ("project", project.get("name")),
            ("your role", project.get("role")),
            ("run as", f"{run_as} (runtime user {cell(runtime)})"),
            ("workspace", project.get("workspace")),
            ("container", container_line(project.get("container"))),
            # Older daemons do not say: then the line is left out.
            *(
                [("dev mode", "on (image builds allowed)" if project["dev_mode"] else "off")]
                if "dev_mode" in project
                else []
            ),
            ("created", f"{when(project.get('created_at'))} by {cell(project.get('created_by'))}"),
            *([("labels", label_text(project["labels"]))] if project.get("labels") else []),
        ]
    )
    settings = project.get("settings") or {}
    effective = project.get("effective") or {}
    lines.append("")
    lines.extend(
        table(
            ("SETTING", "OPTION", "SET", "EFFECTIVE"),
            [
                (
                    key,
                    flag,
                    setting_value(key, settings.get(key)),
                    setting_value(key, effective.get(key, settings.get(key)), effective=True),
                )
                for key, flag in ((s.name, s.option) for s in SETTINGS)
            ],
        )
    )
    lines.append("")
    lines.extend(member_lines(project.get("members") or []))
    if project.get("settings_pending"):
        lines.append("")
        lines.append(PENDING_NOTE)
    return lines


def member_lines(members: Iterable[Mapping[str, Any]]) -> list[str]:
    return table(
        ("MEMBER", "ROLE", "LINUX USER"),
        # In local identity mode a member is bound on their first call to rxd.
        [(m.get("user"), m.get("role"), m.get("linux_user") or "(not bound yet)") for m in members],
    )


def project_list_lines(projects: Sequence[Mapping[str, Any]], shape: Shape = PEOPLE) -> list[str]:
    return table(
        ("PROJECT", "ROLE", "STATE", "CREATED BY"),
        [(p.get("name"), p.get("role"), _summary_state(p), p.get("created_by")) for p in projects],
        shape,
        empty=NO_PROJECTS,
    )


def _summary_state(project: Mapping[str, Any]) -> str:
    # A summary carries the container's state; a full project carries the container itself.
    container = project.get("container")
    if isinstance(container, Mapping):
        return cell(container.get("state"))
    return cell(project.get("state"))


def changed_settings(settings: Mapping[str, Any]) -> str:
    """`cpus=4, image=docker://...` for a confirmation line."""
    return ", ".join(
        f"{key}={value if value != '' else '(default)'}" for key, value in settings.items()
    )


def binding_lines(bindings: Sequence[Mapping[str, Any]], shape: Shape = PEOPLE) -> list[str]:
    return table(
        ("PLATFORM USER", "LINUX USER", "UID", "BOUND AT", "BOUND BY"),
        [
            (
                b.get("platform_user"),
                b.get("user"),
                b.get("uid"),
                when(b.get("bound_at")),
                b.get("bound_by"),
            )
            for b in bindings
        ],
        shape,
        empty="no bindings",
    )


def event_lines(events: Sequence[Mapping[str, Any]], shape: Shape = PEOPLE) -> list[str]:
    return table(
        ("AT", "ACTOR", "ORIGIN", "ACTION", "TARGET", "DETAIL"),
        [
            (
                when(e.get("at")),
                e.get("actor"),
                e.get("origin"),
                e.get("action"),
                _target(e),
                detail(e.get("detail")),
            )
            for e in events
        ],
        shape,
        empty="no events",
    )


def _target(event: Mapping[str, Any]) -> str:
    kind, ident = event.get("target_type"), event.get("target_id")
    if not kind and not ident:
        return "-"
    return f"{cell(kind)}:{cell(ident)}"


def json_text(data: Any) -> str:
    """`--json` output: the API's answer, indented, keys sorted."""
    return json.dumps(data, indent=2, sort_keys=True)


def duration(seconds: Any) -> str:
    if not isinstance(seconds, int):
        return "-"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def countdown_items(c: Mapping[str, Any]) -> list[tuple[str, str]]:
    """`rxctl status` of an awake container: open work, and how long until idle sleep and the
    job's time limit (rxd's best guess)."""
    sessions, detached = c.get("sessions"), c.get("detached")
    open_work = f"{cell(sessions)} session(s), {cell(detached)} detached command(s)"
    timeout = c.get("idle_timeout_min")
    if isinstance(c.get("idle_sleep_in_s"), int):
        idle = f"in {duration(c['idle_sleep_in_s'])} (after {cell(timeout)} min idle)"
    elif not isinstance(timeout, int) or timeout <= 0:
        idle = "never (no idle timeout)"
    elif sessions or detached:
        idle = "not while sessions or detached commands are open"
    else:
        idle = "-"
    limit = (
        f"in {duration(c['time_limit_in_s'])} (of {cell(c.get('time_limit_min'))} min)"
        if isinstance(c.get("time_limit_in_s"), int)
        else "- (the partition's)"
    )
    return [("open", open_work), ("idle sleep", idle), ("time limit", limit)]


NO_SNAPSHOT = "none yet: batch steps get the bare image"


def snapshot_text(snapshot: Any) -> str:
    """Which overlay snapshot batch steps get, and how old it is."""
    if not isinstance(snapshot, Mapping):
        return NO_SNAPSHOT
    return (
        f"{cell(snapshot.get('id'))}, taken {when(snapshot.get('taken_at'))} "
        f"({duration(snapshot.get('age_s'))} ago): batch steps get it"
    )


def size_text(count: Any) -> str:
    """Bytes for people, in binary units: "66.0 MiB"."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        # Compared as printed: 1023.96 MiB would read "1024.0 MiB", which is 1.0 GiB.
        if round(value, 1) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return "-"  # not reached


def usage_text(u: Mapping[str, Any]) -> str:
    """An awake container's usage on one line: "CPU 1.98 busy (5m02s used), memory 66.0 MiB,
    GPUs 1", or why it is unavailable."""
    gpus = u.get("gpus")
    held = f"GPUs {cell(gpus)}" if isinstance(gpus, int) else None
    if "unavailable" in u:
        return "unavailable: " + cell(u["unavailable"]) + (f"; {held}" if held else "")
    cpu_s = u.get("cpu_s")
    used = duration(int(cpu_s)) if isinstance(cpu_s, int | float) else "-"
    busy = u.get("cpus_busy")
    cpu = (
        f"CPU {busy:g} busy ({used} used)" if isinstance(busy, int | float) else f"CPU {used} used"
    )
    parts = [cpu, f"memory {size_text(u.get('memory_bytes'))}"]
    return ", ".join([*parts, *([held] if held else [])])


def label_text(labels: Mapping[str, Any]) -> str:
    """A project's labels as `rxctl project label` takes them: `keep=true team=vision`."""
    return " ".join(f"{safe(str(k))}={safe(str(v))}" for k, v in sorted(labels.items()))


def status_lines(s: Mapping[str, Any]) -> list[str]:
    """The whole of `rxctl status`."""
    from rxslurm.protocol.settings import JOB_FLAGS

    state = cell(s["state"]) + (
        " (unknown: Slurm is not answering)" if s.get("state_unknown") else ""
    )
    items: list[tuple[str, Any]] = [
        ("project", cell(s["project"])),
        ("state", state),
        ("reason", cell(s.get("reason"))),
        ("container", cell(s["name"])),
        ("image", cell(s.get("image"))),
        ("runs as", cell(s.get("runtime_user"))),
        ("job", cell(s.get("job_id"))),
        ("node", cell(s.get("node"))),
        *([("service", f"listens on {s['service']}")] if s.get("service") else []),
        *(
            [("restarts", f"{cell(s['service_restarts'])} (the service's, in this job)")]
            if s.get("service_restarts")
            else []
        ),
        (
            "gpus",
            f"{cell(s['gpus'])} ({cell(s['gres'])})" if s.get("gres") else cell(s.get("gpus")),
        ),
        ("uptime", duration(s.get("uptime_s"))),
        # sbatch's own flags, when the project sets them (older rxd: not in the answer).
        *[(flag, cell(s[flag])) for flag in JOB_FLAGS if s.get(flag)],
        *([("usage", usage_text(s["usage"]))] if isinstance(s.get("usage"), Mapping) else []),
        *(countdown_items(s["countdowns"]) if isinstance(s.get("countdowns"), Mapping) else []),
        ("workspace", f"{cell(s['workspace'])} (at /workspace)"),
        ("fixed mounts", cell(s.get("fixed_mounts"))),
        ("over quota", cell(s.get("over_quota"))),
        ("last error", cell(s.get("last_error"))),
        ("snapshot", snapshot_text(s.get("snapshot"))),
        *([("labels", label_text(s["labels"]))] if s.get("labels") else []),
    ]
    request = s.get("snapshot_request")
    if isinstance(request, Mapping):
        items.append(
            (
                "snapshot asked",
                f"by {cell(request.get('requested_by'))} at {when(request.get('requested_at'))}; "
                "taken when the container next sleeps",
            )
        )
    lines = pairs(items)
    if s.get("settings_pending"):
        lines.append(PENDING_NOTE)
    return lines


def container_list_lines(
    containers: Sequence[Mapping[str, Any]], shape: Shape = PEOPLE
) -> list[str]:
    """`rxctl list`: the containers of the caller's projects."""
    return table(
        ("PROJECT", "ROLE", "STATE", "JOB", "NODE", "REASON"),
        [
            (c["project"], c["role"], c["state"], c["job_id"], c["node"], c["reason"])
            for c in containers
        ],
        shape,
        empty=NO_PROJECTS,
    )
