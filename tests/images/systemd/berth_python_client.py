"""Test hosts only: Python for Ansible's modules, started by berth-python.service (berth_python_server.py
says why); /usr/local/bin/berth-python runs this with `python3 -IS`. Runs as `python3` would:
`berth-python [script [args...]]`, or the program on standard input.
Hands the server its standard input, output and error, arguments, environment, working directory and
umask, then exits with the program's status. Not root, or no server answering: runs /usr/bin/python3."""

import _socket
import os
import sys

SOCKET = os.environ.get("BERTH_PYTHON_SOCKET", "/run/berth-python.sock")
REAL = os.environ.get("BERTH_PYTHON_REAL", "/usr/bin/python3")


def real_python():
    os.execv(REAL, [REAL, *sys.argv[1:]])  # noqa: S606 (becomes python3 with the same arguments)


if os.geteuid() != 0:
    real_python()
try:
    for fd in (0, 1, 2):
        os.fstat(fd)
    umask = os.umask(0)
    os.umask(umask)
    arguments = [os.fsencode(arg) for arg in sys.argv[1:]]
    fields = [b"berth-python/1", os.getcwdb(), b"%o" % umask, b"%d" % len(arguments), *arguments]
    fields += [name + b"=" + value for name, value in os.environb.items()]
    body = b"\0".join(fields)
    fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2))
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    conn.connect(SOCKET)
    conn.sendmsg([len(body).to_bytes(4, "big") + body], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
except OSError:
    # Nothing ran: the server starts a program only after the whole request arrived.
    real_python()
status = b""
while len(status) < 4:
    chunk = conn.recv(4 - len(status))
    if not chunk:
        os.write(2, b"berth-python: the server ended before the program's exit status\n")
        os._exit(70)
    status += chunk
os._exit(int.from_bytes(status, "big"))
