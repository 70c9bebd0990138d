"""Test hosts only: starts each Ansible module's Python by forking a warm interpreter (berth-python.service).

A module task on a test host runs a fresh interpreter, which imports about fifty standard-library
modules before the module does anything: on a Debian 13 test host about 130 ms of CPU per task, of
which a child forked from an interpreter that has them imported already needs about 50. This server
imports them once, at boot, and listens on a socket only root can open. The client
(/usr/local/bin/berth-python, the test hosts' interpreter_python in Molecule's ansible.cfg)
hands it its standard input, output and error, arguments, environment, working directory and umask;
the server forks a child that takes them over and runs the program as `python3` would (a script given
by path, or the program on standard input, as Ansible's pipelining sends it), then reports the exit
status, which the client exits with.

What the module runs is unchanged: the same interpreter, the same site-packages and the same code,
in a process of its own (its own session) with the caller's environment. What differs from a fresh
interpreter: the standard-library modules are imported already, and every child has the server's
hash seed (a fresh interpreter draws its own). Anything else goes to the real interpreter: the client
execs /usr/bin/python3 itself when it does not run as root or the server does not answer.
Nothing in the product uses this; `make demo` and the AWX jobs run the plain interpreter.
"""

import contextlib
import os
import signal
import socket
import sys

SOCKET = "/run/berth-python.sock"
PROTOCOL = b"berth-python/1"
# What Ansible's module_utils and the modules the roles run import from the standard library (and a few
# more): a name this Python lacks is skipped.
PRELOAD = (
    "abc",
    "argparse",
    "ast",
    "atexit",
    "base64",
    "binascii",
    "codecs",
    "collections",
    "collections.abc",
    "contextlib",
    "copy",
    "ctypes",
    "ctypes.util",
    "dataclasses",
    "datetime",
    "decimal",
    "dis",
    "enum",
    "errno",
    "fcntl",
    "fnmatch",
    "fractions",
    "functools",
    "gettext",
    "glob",
    "grp",
    "hashlib",
    "hmac",
    "importlib",
    "importlib.util",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "keyword",
    "linecache",
    "locale",
    "logging",
    "marshal",
    "numbers",
    "opcode",
    "operator",
    "pathlib",
    "pickle",
    "pkgutil",
    "platform",
    "pty",
    "pwd",
    "queue",
    "random",
    "re",
    "runpy",
    "secrets",
    "select",
    "selectors",
    "shlex",
    "shutil",
    "signal",
    "socket",
    "stat",
    "string",
    "struct",
    "subprocess",
    "syslog",
    "tempfile",
    "termios",
    "textwrap",
    "threading",
    "time",
    "tokenize",
    "traceback",
    "types",
    "typing",
    "urllib.parse",
    "uuid",
    "warnings",
    "weakref",
    "zipfile",
    "zipimport",
)


def preload():
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            continue


def receive(conn):
    """(fields, fds) of one request: a length-prefixed message of NUL-separated fields, and the client's
    standard input, output and error."""
    data, fds, _flags, _address = socket.recv_fds(conn, 65536, 3)
    if len(data) < 4 or len(fds) != 3:
        raise ValueError("a request starts with its length and carries three file descriptors")
    length = int.from_bytes(data[:4], "big")
    body = bytearray(data[4:])
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            raise ValueError("the request ended early")
        body += chunk
    fields = bytes(body).split(b"\0")
    if fields[0] != PROTOCOL:
        raise ValueError("unknown protocol")
    return fields[1:], fds


def exit_code(exc):
    """The exit status a SystemExit gives, as the interpreter decides it."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def run(fields, fds):
    """In the forked child: become the program's process, run it, and exit with its status."""
    cwd, umask, argc = fields[0], int(fields[1], 8), int(fields[2])
    argv = [os.fsdecode(arg) for arg in fields[3 : 3 + argc]]
    environment = fields[3 + argc :]
    os.setsid()
    # The signal handling a fresh interpreter starts with, whatever the server's parent left it.
    for number in (signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM, signal.SIGALRM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(number, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.umask(umask)
    os.environb.clear()
    for entry in environment:
        name, _sep, value = entry.partition(b"=")
        os.environb[name] = value
    with contextlib.suppress(OSError):
        os.chdir(cwd)
    import builtins
    import types

    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    if argv:
        filename = argv[0]
        sys.argv = argv
        sys.path[0] = os.path.dirname(os.path.realpath(filename))
        main.__file__ = filename
        with open(filename, "rb") as script:
            source = script.read()
    else:
        filename = "<stdin>"
        sys.argv = [""]
        sys.path[0] = ""
        with open(0, "rb", closefd=False) as program:
            source = program.read()
    status = 0
    try:
        exec(compile(source, filename, "exec", dont_inherit=True), main.__dict__)  # noqa: S102 (the program `python3` would run)
    except SystemExit as exc:
        status = exit_code(exc)
    except BaseException:  # reported as the interpreter reports an uncaught exception
        sys.excepthook(*sys.exc_info())
        status = 1
    finally:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()
        import atexit

        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
    os._exit(status & 0xFF)


def handle(conn):
    """In a child of the server: fork the program's process, wait for it, send its exit status."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    fields, fds = receive(conn)
    pid = os.fork()
    if pid == 0:
        conn.close()
        run(fields, fds)
    for fd in fds:
        os.close(fd)
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    conn.sendall((128 - status if status < 0 else status).to_bytes(4, "big"))


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else SOCKET
    preload()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o077)
    server.bind(path)
    os.umask(previous)
    server.listen(128)
    # The kernel reaps the request handlers; each handler waits for its own program.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    while True:
        conn, _address = server.accept()
        if os.fork() == 0:
            server.close()
            try:
                handle(conn)
            finally:
                os._exit(0)
        conn.close()


if __name__ == "__main__":
    main()
