"""The SDK's exceptions, and the one table that maps rxd's error codes onto them.

Every failure the SDK raises is an RxError whose message is rxd's own reason (one line for
people); `code` and `status` say what rxd answered, when it answered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class RxError(Exception):
    """Anything the SDK could not do; the base of the SDK's other exceptions."""

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class NotFound(RxError):
    """No such project (or you may not see it: rxd tells a non-member it does not exist)."""


class Forbidden(RxError):
    """Your role (or identity) does not allow it, e.g. a viewer's exec."""


class Conflict(RxError):
    """The state does not allow it (a container in error, not enabled, the last owner...)."""


class QuotaExceeded(Conflict):
    """Starting the container would go over a quota (rxd's `[quotas] policy = "reject"`)."""


class Timeout(RxError):
    """A wait ended before what it waited for: rxd's wake limit, or the SDK's own deadline."""


class Unavailable(RxError):
    """rxd (or Slurm behind it) did not answer, or the SDK cannot reach it."""


class BadRequest(RxError):
    """rxd could not use what was asked (a bad setting, name or command)."""


# rxd's codes (docs/api.md, docs/exec.md) -> the exception that means it. Codes not here fall back
# on the HTTP status, then on RxError.
_BY_CODE: dict[str, type[RxError]] = {
    "not_found": NotFound,
    "forbidden": Forbidden,
    "unknown_caller": Forbidden,
    "not_bound": Forbidden,
    "not_bindable": Forbidden,
    "uid_mismatch": Forbidden,
    "conflict": Conflict,
    "no_run_as": Conflict,
    "no_image": Conflict,
    "quota": QuotaExceeded,
    "timeout": Timeout,
    "bad_request": BadRequest,
    "unavailable": Unavailable,
    "too_many_connections": Unavailable,
}
_BY_STATUS: dict[int, type[RxError]] = {
    400: BadRequest,
    401: Forbidden,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    503: Unavailable,
}


def error_for(message: str, code: str | None = None, status: int | None = None) -> RxError:
    """The exception for rxd's answer `code` (and HTTP `status`, if any), with its reason."""
    kind = _BY_CODE.get(code or "") or _BY_STATUS.get(status or 0) or RxError
    return kind(message, code=code, status=status)


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Inside, the client's own exceptions leave as the SDK's."""
    from rxslurm.cli.client import ApiError, ClientError, DaemonUnavailable
    from rxslurm.cli.exec_client import ExecError

    try:
        yield
    except ApiError as exc:
        raise error_for(exc.message, exc.code, exc.status) from None
    except DaemonUnavailable as exc:
        raise Unavailable(str(exc)) from None
    except ClientError as exc:
        raise RxError(str(exc)) from None
    except ExecError as exc:
        raise error_for(str(exc), exc.code) from None
