"""Export and import of a project's persistent layer, streamed through the API (docs/data.md).

The archive travels in the HTTP exchange itself, a chunked GET out and a streamed POST in, and
never as a file root writes or reads: rxctl may run on another host than rxd, and a path the
caller names would be one root must not touch. rxd only relays bytes between the caller and a
script running as the runtime user; it holds at most one chunk in memory. Over the network door
an upload's MUNGE credential binds the whole archive's digest: rxd hashes what it relays and ends
the upload as proven only if the digest matches (api/door_stream.py); the script unpacks nothing
before that.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import subprocess
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from rxslurm.daemon.api.app import json_response
from rxslurm.daemon.api.context import daemon_of
from rxslurm.daemon.api.door_stream import Refused, proof_of
from rxslurm.daemon.api.request_actor import actor_of
from rxslurm.daemon.containers.exports import (
    LIMITS,
    MAX_UPLOAD_BYTES,
    finish_import,
    plan_export,
    plan_import,
)
from rxslurm.daemon.errors import ApiError, Conflict
from rxslurm.daemon.runtime.archive_export import start_export
from rxslurm.daemon.runtime.archive_import import (
    IMPORT_TIMEOUT_S,
    ImportFailed,
    Outcome,
    end,
    frame,
    outcome,
    start_import,
)
from rxslurm.daemon.slow_work import run_slow
from rxslurm.protocol import routes as route
from rxslurm.slurm.runas import kill_group

log = logging.getLogger("rxslurm.exports")
routes = web.RouteTableDef()
CHUNK = 1 << 20


def _tail(stderr: bytes) -> str:
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return lines[-1][:300] if lines else "no reason given"


def _end(proc: subprocess.Popen[Any]) -> None:
    if proc.stdin is not None and proc.poll() is None:
        # The caller went mid-upload: a cut archive, which the script refuses and cleans up
        # after; a kill would leave its folder behind.
        with contextlib.suppress(OSError):
            proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
    if proc.poll() is None:
        kill_group(proc)
    proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


@routes.get(route.PROJECT_EXPORT)
async def export(request: web.Request) -> web.StreamResponse:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    workspace = request.query.get("workspace", "0") not in ("0", "", "false")
    # A sleeping container's overlay is snapshotted first: slow work's own pool.
    plan = await run_slow(
        plan_export, daemon.containers, actor, request.match_info["name"], workspace
    )
    proc = await asyncio.to_thread(
        start_export, plan.snapshot, plan.workspace, plan.manifest, plan.runas
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        first = await asyncio.to_thread(os.read, proc.stdout.fileno(), CHUNK)
        if not first:
            stderr = await asyncio.to_thread(proc.stderr.read)
            raise Conflict(f"cannot export {plan.project}: {_tail(stderr)}")
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/gzip",
                "Content-Disposition": f'attachment; filename="{plan.project}.rx.tar.gz"',
            }
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = first
        try:
            while chunk:
                await response.write(chunk)
                chunk = await asyncio.to_thread(os.read, proc.stdout.fileno(), CHUNK)
        except ConnectionError:
            return response  # the caller went; nothing more to say
        code = await asyncio.to_thread(proc.wait)
        if code != 0:
            # The status is sent: the connection cut before the last chunk is how the client
            # learns of it (returning or raising would let aiohttp end the body properly).
            stderr = await asyncio.to_thread(proc.stderr.read)
            log.warning(
                "export failed midway", extra={"project": plan.project, "error": _tail(stderr)}
            )
            if request.transport is not None:
                request.transport.abort()
            return response
        await response.write_eof()
        return response
    finally:
        await asyncio.to_thread(_end, proc)


@routes.post(route.PROJECT_IMPORT)
async def import_(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    if (request.content_length or 0) > MAX_UPLOAD_BYTES:
        raise ApiError(
            f"the archive is over {MAX_UPLOAD_BYTES} bytes", status=413, code="too_large"
        )
    plan = await run_slow(plan_import, daemon.containers, actor, request.match_info["name"])
    proc = await asyncio.to_thread(
        start_import,
        plan.state_dir,
        plan.workspace,
        plan.stamp,
        MAX_UPLOAD_BYTES,
        LIMITS,
        plan.runas,
    )
    received = 0
    proof = proof_of(request)
    body = hashlib.sha256()
    unproven: Refused | None = None
    try:
        # The script counts what it writes too and refuses past the cap; it is the one that
        # cleans up, so even a caller gone mid-upload ends in its refusal (a cut archive), not
        # in a kill.
        whole = False
        try:
            async for chunk in request.content.iter_chunked(CHUNK):
                received += len(chunk)
                body.update(chunk)
                await asyncio.to_thread(_feed, proc, frame(chunk))
            whole = request.content_length in (None, received)
        except (OSError, aiohttp.ClientError, HttpProcessingError):
            pass  # the script stopped reading (it refused), or the caller went
        if whole and proof is not None:
            try:
                proof.verify(body.digest())
            except Refused as exc:
                unproven = exc
        if whole:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(_feed, proc, end(unproven is None))
        stdout, stderr = await asyncio.to_thread(_answer, proc)
    finally:
        await asyncio.to_thread(_end, proc)
    if unproven is not None:
        raise unproven  # the script refused and cleaned up; the door audits the refusal
    try:
        result = outcome(proc.returncode, stdout, stderr)
    except ImportFailed as exc:
        result = Outcome(refused=str(exc))
    answer = await run_slow(finish_import, daemon.containers, actor, plan, result, received)
    return json_response(answer)


def _feed(proc: subprocess.Popen[Any], chunk: bytes) -> None:
    assert proc.stdin is not None
    proc.stdin.write(chunk)


def _answer(proc: subprocess.Popen[Any]) -> tuple[bytes, bytes]:
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    proc.stdin = None  # communicate() would flush it
    try:
        stdout, stderr = proc.communicate(timeout=IMPORT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return b"", f"took over {IMPORT_TIMEOUT_S:g} s".encode()
    return stdout, stderr
