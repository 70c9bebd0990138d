"""The test hosts' berth-python (tests/images/systemd/berth_python_client.py and berth_python_server.py): a program
runs as a fresh `python3` would run it, in a child forked from the warm server, and the client falls back
to the real interpreter when it is not root or no server answers.

The server and the client run here with this interpreter, the server on a socket in a temporary
directory (the client's BERTH_PYTHON_SOCKET). A program that finds `decimal` imported before it imports
anything ran in the server's child: a fresh interpreter does not import it.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

IMAGE = Path(__file__).resolve().parents[3] / "tests" / "images" / "systemd"
CLIENT = IMAGE / "berth_python_client.py"
SERVER = IMAGE / "berth_python_server.py"

# What a program can tell about the interpreter that runs it.
REPORT = """
import os, sys
print("forked" if "decimal" in sys.modules else "fresh", sys.argv, os.getcwd(), os.environ.get("BERTH_PROBE"),
      oct(os.umask(0o022)), sep="|")
print("to stderr", file=sys.stderr)
sys.exit(3)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    socket_path = tmp_path_factory.mktemp("berth-python") / "server.sock"
    process = subprocess.Popen([sys.executable, str(SERVER), str(socket_path)], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not socket_path.exists():
        assert process.poll() is None, "the server exited"
        assert time.monotonic() < deadline, "the server did not listen within 20 s"
        time.sleep(0.05)
    yield socket_path
    process.terminate()
    process.wait(timeout=10)


def client(socket_path, *args, program="", cwd=None, env=None):
    environment = {
        "PATH": os.environ["PATH"],
        "BERTH_PYTHON_SOCKET": str(socket_path),
        "BERTH_PYTHON_REAL": sys.executable,
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-IS", str(CLIENT), *args],
        input=program.encode(),
        capture_output=True,
        cwd=cwd,
        env=environment,
        check=False,
    )


def test_a_program_on_stdin_runs_forked_with_the_callers_arguments_directory_environment_and_umask(server, tmp_path):
    result = client(server, program=REPORT, cwd=tmp_path, env={"BERTH_PROBE": "probe value"})
    assert result.returncode == 3
    assert result.stdout.decode().strip().split("|") == ["forked", "['']", str(tmp_path), "probe value", "0o22"]
    assert result.stderr.decode() == "to stderr\n"


def test_a_script_gets_its_arguments_and_an_uncaught_exception_exits_1_with_its_traceback(server, tmp_path):
    script = tmp_path / "script.py"
    script.write_text('import sys\nprint(sys.argv)\nraise ValueError("boom")\n')
    result = client(server, str(script), "first", "second")
    assert result.returncode == 1
    assert result.stdout.decode() == f"['{script}', 'first', 'second']\n"
    assert "ValueError: boom" in result.stderr.decode()
    assert f'File "{script}", line 3' in result.stderr.decode()


def test_the_exit_status_is_the_programs_own(server):
    assert client(server, program="import sys; sys.exit('a message')").returncode == 1
    assert client(server, program="import sys; sys.exit(None)").returncode == 0
    killed = client(server, program="import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    assert killed.returncode == 128 + signal.SIGTERM


def test_atexit_handlers_run_and_buffered_output_is_flushed(server):
    program = "import atexit, sys\natexit.register(print, 'at exit')\nsys.stdout.write('buffered, no newline; ')\n"
    result = client(server, program=program)
    assert (result.returncode, result.stdout.decode()) == (0, "buffered, no newline; at exit\n")


def test_the_signal_handling_is_a_fresh_interpreters(server):
    program = (
        "import signal\n"
        "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler,"
        " signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN, signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL,"
        " signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)\n"
    )
    assert client(server, program=program).stdout.decode() == "True True True True\n"


def test_programs_run_side_by_side(server):
    program = "import time\nstarted = time.monotonic()\ntime.sleep(1)\nprint(started, time.monotonic())\n"
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _n: client(server, program=program), range(6)))
    assert [result.returncode for result in results] == [0] * 6
    spans = [tuple(map(float, result.stdout.split())) for result in results]
    # Every program started before any of them ended.
    assert max(start for start, _end in spans) < min(end for _start, end in spans)


def test_without_a_server_the_real_interpreter_runs_the_program(tmp_path):
    result = client(tmp_path / "no-server.sock", program=REPORT, cwd=tmp_path, env={"BERTH_PROBE": "x"})
    assert result.returncode == 3
    assert result.stdout.decode().strip().split("|") == ["fresh", "['']", str(tmp_path), "x", "0o22"]


def test_a_caller_that_is_not_root_gets_the_real_interpreter(server):
    """As user nobody, with the machine's /usr/bin/python3 and a copy of the client that nobody can read
    (this checkout and its virtualenv may sit where nobody cannot)."""
    assert os.geteuid() == 0, "the harness runs as root; this case needs to become another user"
    directory = Path(tempfile.mkdtemp(prefix="berth-python-", dir="/tmp"))
    try:
        directory.chmod(0o755)
        copy = directory / "berth_python_client.py"
        shutil.copy(CLIENT, copy)
        result = subprocess.run(
            ["/usr/bin/python3", "-IS", str(copy)],
            input=b"import os, sys\nprint('decimal' in sys.modules, os.geteuid())\n",
            capture_output=True,
            cwd="/",
            env={"BERTH_PYTHON_SOCKET": str(server), "BERTH_PYTHON_REAL": "/usr/bin/python3"},
            preexec_fn=lambda: (os.setgid(65534), os.setuid(65534)),
            check=False,
        )
    finally:
        shutil.rmtree(directory)
    assert (result.returncode, result.stdout.decode(), result.stderr.decode()) == (0, "False 65534\n", "")
