"""Which content digest a registry says a reference names now: one manifest request, as the pull
account.

The registry is any host a user named, and its answers are theirs: the request runs as the pull
account (like the pull itself, never as root), in rxd's constant script below, with the pull
account's clean environment (no proxy, no credentials), bounded in time and in what it reads.
Anonymous registries and the usual bearer-token challenge (Docker Hub's) are followed; registries
that need a login are not supported (as for pulls).
"""

from __future__ import annotations

import subprocess
import threading
import time

from rxslurm.daemon.images.pull import (
    POLL_S,
    PullCancelled,
    PullError,
    PullSettings,
    registry_of,
)
from rxslurm.daemon.runtime.apptainer import last_fatal
from rxslurm.daemon.runtime.user_script import script_argv
from rxslurm.protocol.image_ref import BadReference, ImageRef, check_digest
from rxslurm.slurm.runas import kill_group, spawn

# Each request's own time-out; the whole query is bounded by pulls.timeout_s.
REQUEST_TIMEOUT_S = 60.0

# argv: base URL (scheme://host), repository, tag or digest, seconds. Prints the digest.
_SCRIPT = r"""
import hashlib, json, re, sys, urllib.error, urllib.parse, urllib.request
base, repo, ref, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
MAX = 4 << 20
ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
url = f"{base}/v2/{repo}/manifests/{ref}"

def fail(message):
    print(message[:300], file=sys.stderr)
    sys.exit(1)

def token(challenge):
    if not challenge.lower().startswith("bearer "):
        fail("the registry asks for a login, which rx-slurm does not do")
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    realm = params.get("realm", "")
    if not realm.startswith(("https://", "http://")):
        fail("the registry's login challenge names no token service")
    query = {"service": params.get("service", ""), "scope": f"repository:{repo}:pull"}
    with urllib.request.urlopen(realm + "?" + urllib.parse.urlencode(query), timeout=timeout) as r:
        body = json.loads(r.read(1 << 16))
    return body.get("token") or body.get("access_token") or ""

def ask(method):
    headers = {"Accept": ACCEPT}
    for attempt in (0, 1):
        try:
            return urllib.request.urlopen(
                urllib.request.Request(url, method=method, headers=headers), timeout=timeout
            )
        except urllib.error.HTTPError as exc:
            if exc.code != 401 or attempt:
                raise
            headers["Authorization"] = "Bearer " + token(exc.headers.get("WWW-Authenticate", ""))

try:
    with ask("HEAD") as answer:
        digest = answer.headers.get("Docker-Content-Digest", "")
    if not digest:
        with ask("GET") as answer:
            body = answer.read(MAX + 1)
        if len(body) > MAX:
            fail("the registry's manifest is larger than 4 MiB")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
except urllib.error.HTTPError as exc:
    if exc.code == 404:
        fail(f"the registry has no image {repo}:{ref} (manifest unknown)")
    fail(f"the registry answered {exc.code} {exc.reason}")
except (urllib.error.URLError, OSError, ValueError) as exc:
    fail(f"cannot reach the registry: {getattr(exc, 'reason', exc)}")
print(digest)
"""


class ResolveError(PullError):
    """The registry did not say which digest the reference names; the message says why."""


def resolve_argv(settings: PullSettings, ref: ImageRef) -> list[str]:
    """The script's argv: plain HTTP only for registries the config names (pulls.plain_http)."""
    host = ref.api_host
    scheme = "http" if registry_of(f"docker://{host}/x") in settings.plain_http else "https"
    each = min(REQUEST_TIMEOUT_S, settings.timeout_s)
    return script_argv(
        _SCRIPT, f"{scheme}://{host}", ref.full_repository, ref.tag or "latest", f"{each:g}"
    )


def resolve(settings: PullSettings, ref: ImageRef, cancel: threading.Event | None = None) -> str:
    """The content digest ``ref`` (a tag) names now, asked of its registry as the pull account;
    bounded by ``pulls.timeout_s`` like the pull, and ended when rxd stops (``cancel``)."""
    if ref.digest:
        return ref.digest
    try:
        proc = spawn(resolve_argv(settings, ref), settings.account, cwd="/")
    except OSError as exc:
        raise ResolveError(f"cannot start the registry query: {exc}") from None
    deadline = time.monotonic() + settings.timeout_s
    while True:
        try:
            out, err = proc.communicate(timeout=POLL_S)
            break
        except subprocess.TimeoutExpired:
            if cancel is not None and cancel.is_set():
                _end(proc)
                raise PullCancelled(
                    "rxd stopped during the pull; it starts again with rxd"
                ) from None
            if time.monotonic() > deadline:
                _end(proc)
                raise _timed_out(settings) from None
    if proc.returncode != 0 and time.monotonic() > deadline:
        # A registry that never answers: the query's own request time-out (the same seconds,
        # counted from its start) may end it before this loop sees the deadline on a busy host.
        raise _timed_out(settings)
    if proc.returncode != 0:
        # The registry's words, made safe to show (no control characters, bounded).
        reason = last_fatal(err or "") or "no reason given"
        raise ResolveError(f"cannot resolve {ref}: {reason}")
    try:
        return check_digest(out.strip())
    except BadReference:
        raise ResolveError(f"cannot resolve {ref}: the registry's digest is malformed") from None


def _timed_out(settings: PullSettings) -> PullError:
    return PullError(f"the pull did not finish within {settings.timeout_s:.0f} s (pulls.timeout_s)")


def _end(proc: subprocess.Popen[str]) -> None:
    kill_group(proc)
    proc.communicate()
