"""`Secret`: values a container's commands get as environment variables, stored by rxd as the
project's secrets (`rxctl secret`), never put in a command line."""

from __future__ import annotations

import os
from collections.abc import Mapping

from rxslurm.protocol import env_vars
from rxslurm.sdk.errors import BadRequest


def checked(values: object, what: str) -> dict[str, str]:
    """Names and values as rxd checks them (env_vars), BadRequest naming the first bad one; the
    message never quotes a value."""
    try:
        return env_vars.check_variables(values, what)
    except env_vars.BadVariable as exc:
        raise BadRequest(str(exc)) from None


class Secret:
    """Named values set as the project's secrets when the container runs: every command in the
    container then has them in its environment. The values stay out of `repr` and of argv."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = checked(dict(values), "secret")

    @classmethod
    def from_dict(cls, values: Mapping[str, str]) -> Secret:
        return cls(values)

    @classmethod
    def from_local_env(cls, *names: str) -> Secret:
        """The named variables of this process's environment, read now; BadRequest names one
        that is not set."""
        missing = [name for name in names if name not in os.environ]
        if missing:
            raise BadRequest(f"{', '.join(missing)} not set in this process's environment")
        if not names:
            raise BadRequest("Secret.from_local_env needs one or more variable names")
        return cls({name: os.environ[name] for name in names})

    @property
    def names(self) -> list[str]:
        return sorted(self._values)

    def values(self) -> dict[str, str]:
        """The names and values (a copy), for the request that stores them."""
        return dict(self._values)

    def __repr__(self) -> str:
        return f"Secret(names={self.names!r})"
