"""The program of a port-forward step (`rxctl port-forward`, docs/services.md): on the container's
node, as the runtime user, outside the container (the instance shares the node's network), it
copies the step's stdin to 127.0.0.1:PORT and the port's answers to its stdout, passing each
side's end on. The host's python3, so the image needs none. The port is its one argument."""

from __future__ import annotations

RELAY = """
import os, socket, sys, threading
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def up():
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while True:
    data = s.recv(65536)
    if not data:
        break
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
"""


def relay_argv(port: int) -> list[str]:
    """The relay's argv (-I: no user site, no PYTHON* variables of the job's environment)."""
    if not 0 < port < 65536:
        raise ValueError(f"no port to relay to: {port}")
    return ["python3", "-I", "-c", RELAY, str(port)]
