"""What the holder's status line says of the project's service, and the container's reason for it
(docs/services.md). The line is "running <instance>", then "service <port>" while it runs,
"service-restarting <status>" while it waits to be started again, "service-exited <status>" once
it ended for good; after the first restart, " restarts <n> <last status>" ends each of these."""

from __future__ import annotations

from dataclasses import dataclass

from rxslurm.daemon.containers.views import SERVICE_EXITED, SERVICE_FAILED

KINDS = {"service": "up", "service-restarting": "restarting", "service-exited": "exited"}


@dataclass(frozen=True)
class ServiceReport:
    kind: str  # up, restarting, exited
    code: str  # the exit status that made it restart or end ("" while up)
    restarts: int  # how many times the holder started it again in this job
    last: str  # the exit status before the latest restart ("" if none)


def _status(word: str) -> str:
    """An exit status as the holder prints it (0-255); anything else is shown as "?"."""
    return word if word.isascii() and word.isdigit() and len(word) <= 3 else "?"


def parse_service_report(line: str) -> ServiceReport | None:
    """The service's part of a "running ..." line; None when it names no service."""
    words = line.split()
    if len(words) < 4 or words[0] != "running" or words[2] not in KINDS:
        return None
    kind = KINDS[words[2]]
    code = "" if kind == "up" else _status(words[3])
    restarts, last = 0, ""
    rest = words[4:]
    if len(rest) >= 3 and rest[0] == "restarts" and rest[1].isascii() and rest[1].isdigit():
        restarts, last = min(int(rest[1][:4]), 9999), _status(rest[2])
    return ServiceReport(kind, code, restarts, last)


def service_reason(report: ServiceReport) -> str | None:
    """The running container's reason for the report (None: nothing to say)."""
    times = "once" if report.restarts == 1 else f"{report.restarts} times"
    if report.kind == "exited":
        after = f" after it was restarted {times}" if report.restarts else ""
        return f"{SERVICE_EXITED} (status {report.code}){after}; see `rxctl logs`"
    if report.kind == "restarting":
        return (
            f"{SERVICE_FAILED} (status {report.code}) and is restarted soon; "
            "see `rxctl logs --service`"
        )
    if report.restarts:
        return f"the service was restarted {times} (last exit status {report.last})"
    return None
