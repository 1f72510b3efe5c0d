"""The agent's program: listen on the node, authenticate each connection, run its command.

holder.sh starts it inside the instance (`apptainer exec instance://... python3 -I -B -c ...`)
with its code, libmunge and munged's folder passed in as open descriptors (the container sees
none of them), and reads from its stdout:

    listening <host> <port> <key hex>     once, when it is ready (the holder writes job-J.agent)
    sessions <n>                          whenever the number of running commands changes

The agent ends when its stdin closes (the holder is gone) and ends its commands with it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import socket
import sys
import threading
import time
from typing import Any

import rxslurm.slurm.munge as munge
from rxslurm.agent.auth import Identity, Refused, authenticate
from rxslurm.agent.command import end_all, serve_request
from rxslurm.protocol.agent_wire import (
    KEY_BYTES,
    VERSION,
    FrameReader,
    WireError,
    control,
    is_nonce,
    proof,
)
from rxslurm.protocol.exec_wire import CONTROL, decode

# The whole handshake (hello, credential, body) must be done within this; a connection that
# trickles it is closed.
HANDSHAKE_S = 10.0
MAX_CONNECTIONS = 256
# How long a finished session waits for its client to close first.
CLOSE_WAIT_S = 5.0
REPORT_EVERY_S = 1.0


class Agent:
    def __init__(self, me: Identity, listener: socket.socket) -> None:
        self.me = me
        self.listener = listener
        self.lock = threading.Lock()
        self.connections = 0
        self.sessions = 0
        self.reported = 0  # the count the holder last heard
        self.pending: threading.Timer | None = None

    def report(self, line: str) -> None:
        with self.lock, contextlib.suppress(OSError, ValueError):
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def serve_forever(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except InterruptedError:
                continue
            except OSError:
                time.sleep(0.05)  # out of descriptors: let a session end first
                continue
            with self.lock:
                if self.connections >= MAX_CONNECTIONS:
                    conn.close()
                    continue
                self.connections += 1
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader = FrameReader()
            try:
                request = self.handshake(conn, reader)
            except (Refused, WireError, TimeoutError, OSError) as exc:
                with contextlib.suppress(OSError):
                    conn.sendall(control({"error": f"refused: {exc or 'time-out'}"}))
                return
            conn.settimeout(None)
            self.count(+1)
            try:
                serve_request(conn, request, reader)
            finally:
                self.count(-1)
        except Exception as exc:  # one session's failure never ends the agent
            with contextlib.suppress(OSError):
                conn.sendall(control({"error": f"the agent failed: {exc}"}))
        finally:
            close_gently(conn)
            with self.lock:
                self.connections -= 1

    def count(self, change: int) -> None:
        """Tell the holder how many sessions are open: at once when the first opens (the
        container must not be stopped as idle now), else at most once a second (a burst of
        short commands is one report a second, not two per command; the idle timer counts in
        minutes)."""
        with self.lock:
            self.sessions += change
            if self.sessions and not self.reported:
                self.reported = self.sessions
                now = True
            else:
                now = False
                if self.pending is None:
                    self.pending = threading.Timer(REPORT_EVERY_S, self.report_pending)
                    self.pending.daemon = True
                    self.pending.start()
            sessions = self.sessions
        if now:
            self.report(f"sessions {sessions}")

    def report_pending(self) -> None:
        with self.lock:
            self.pending = None
            self.reported = sessions = self.sessions
        self.report(f"sessions {sessions}")

    def handshake(self, conn: socket.socket, reader: FrameReader) -> dict[str, Any]:
        deadline = time.monotonic() + HANDSHAKE_S
        nonce = secrets.token_hex(16)
        frames = self.receive(conn, reader, deadline, 1)
        try:
            client_nonce = decode(frames[0]).get("nonce")
        except ValueError:
            raise Refused("the hello is not JSON") from None
        if not isinstance(client_nonce, str) or not is_nonce(client_nonce):
            raise Refused("the hello has no nonce")
        # Our own credential over both nonces: the client checks it is the runtime user's.
        credential = self.me.encode(proof(self.me.job_id, client_nonce, nonce))
        hello = {"agent": VERSION, "job": self.me.job_id, "nonce": nonce}
        conn.sendall(control({**hello, "credential": credential}))
        credential_message, body = self.receive(conn, reader, deadline, 2)
        try:
            theirs = decode(credential_message).get("credential")
        except ValueError:
            raise Refused("the credential message is not JSON") from None
        _, request = authenticate(self.me, nonce, theirs, body)
        return request

    def receive(
        self, conn: socket.socket, reader: FrameReader, deadline: float, count: int
    ) -> list[bytes]:
        """The next `count` control frames; the client sends nothing else before the command
        has started."""
        frames: list[bytes] = []
        while len(frames) < count:
            for channel, payload in reader.feed(b""):
                if channel != CONTROL or len(frames) == count:
                    raise Refused("data before the command started")
                frames.append(payload)
            if len(frames) == count:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            conn.settimeout(left)
            data = conn.recv(65536)
            if not data:
                raise Refused("the connection closed during the handshake")
            reader.buffer += data
        return frames


def close_gently(conn: socket.socket) -> None:
    """Close after the client has read our last message: closing with its later bytes unread
    (stdin's end, a signal) would reset the connection and could lose that message."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(CLOSE_WAIT_S)
        while conn.recv(65536):
            pass
    conn.close()


def listen(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


def node_address() -> str:
    """The node's address as its name resolves (what a login node reaches it by)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def watch_stdin() -> None:
    """The holder holds our stdin: when it closes, the job is ending."""
    with contextlib.suppress(OSError):
        while os.read(0, 4096):
            pass
    # Every command is in a session of its own: end them with the agent.
    end_all()
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rxslurm-agent")
    parser.add_argument("--job", type=int, required=True)
    parser.add_argument("--uid", type=int, required=True)
    parser.add_argument("--libmunge", required=True)
    parser.add_argument("--munge-socket", required=True)
    parser.add_argument("--host", default="")
    args = parser.parse_args(argv)
    munge.use_library(args.libmunge)

    def decode_credential(credential: str) -> munge.Decoded:
        return munge.decode(credential, socket=args.munge_socket)

    try:
        # munged answers and the library works here: else no agent (rxctl uses Slurm steps).
        decode_credential(munge.encode(b"", socket=args.munge_socket))
    except munge.MungeError as exc:
        print(f"error MUNGE does not work in the container: {exc.message}", flush=True)
        return 1

    def encode_credential(payload: bytes) -> str:
        return munge.encode(payload, socket=args.munge_socket)

    me = Identity(
        job_id=args.job,
        uid=args.uid,
        key=secrets.token_bytes(KEY_BYTES),
        decode=decode_credential,
        encode=encode_credential,
    )
    host = args.host or node_address()
    listener = listen(host)
    port = listener.getsockname()[1]
    # A SIGINT or SIGQUIT for the job's batch step is not for the agent. A handler, not SIG_IGN:
    # ignored signals stay ignored in children, and a shell cannot trap a signal ignored at its
    # start; a caught one is back at its default in a command without any work in the child
    # (command.py starts commands with vfork then).
    for signum in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, lambda signum, frame: None)
    agent = Agent(me, listener)
    agent.report(f"listening {host} {port} {me.key.hex()}")
    threading.Thread(target=watch_stdin, daemon=True).start()
    agent.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
