# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The part of a rollout that must not depend on the controller: it runs on the host in a detached
process (its own session, no terminal, stdio on /dev/null), so it carries on to one consistent end
(served and recorded, or switched back and stopped) when the controller, its connection or the
module's own process dies.

The module's process stays in the foreground only to wait for the outcome and to prove that the
controller is there, by writing the heartbeat into the deploy lock (``<lock_dir>/heartbeat``) once a
second. It stops, and so does the heartbeat, as soon as the controller is gone:

- the module's parent changed (the process that started it died);
- the module's stdout is a pipe nobody reads any more (the connection or the ansible worker died);
- the lock's ``owner`` names this host and a controller process that no longer exists.

The detached process then finishes alone and, finding the foreground gone or the heartbeat older
than ``heartbeat_timeout``, releases the lock it was taken under (only if the lock is still the one it
started under) and leaves its outcome in ``<state_dir>/last-rollout.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import threading
import time
import traceback

from ansible_collections.berth.stack.plugins.module_utils import _files as files

POLL_SECONDS = 0.5
HEARTBEAT_SECONDS = 1.0
OWNER_FILE = "owner"
HEARTBEAT_FILE = "heartbeat"
ROLLOUT_PID_FILE = "rollout.pid"
LAST_OUTCOME = "last-rollout.json"


def pid_alive(pid):
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


def read_owner(lock_dir):
    """The lock's owner record (JSON written by the compose_app role), {} when unreadable."""
    try:
        with open(os.path.join(lock_dir, OWNER_FILE), encoding="utf-8") as handle:
            owner = json.load(handle)
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _stdout_abandoned(fd=1):
    """True when stdout is a pipe whose reader is gone: the controller will never read the result."""
    poller = select.poll()
    poller.register(fd, 0)
    return any(events & (select.POLLERR | select.POLLHUP) for _fd, events in poller.poll(0))


def controller_gone(expected_parent, owner):
    """Why the controller is gone, or None while it is there."""
    if os.getppid() != expected_parent:
        return "the module's parent process died"
    if _stdout_abandoned():
        return "nobody reads the module's output any more"
    same_host = owner.get("controller") == socket.gethostname()
    if same_host and owner.get("pid") and not pid_alive(owner["pid"]):
        return f"the controller process {owner['pid']} on this host died"
    return None


def write_heartbeat(lock_dir):
    stamp = {"epoch": time.time(), "pid": os.getpid()}
    with contextlib.suppress(OSError):
        files.write_atomically(os.path.join(lock_dir, HEARTBEAT_FILE), json.dumps(stamp) + "\n", 0o644)


@contextlib.contextmanager
def keep_heartbeat(lock_dir):
    """Write the lock's heartbeat once a second, in a thread, for as long as the block runs and the
    controller is there: a long step before the rollout (migrations, their backup) must not make a live
    deploy look dead to playbooks/unlock.yml. No lock_dir, nothing is written."""
    if not lock_dir:
        yield
        return
    parent, owner, stop = os.getppid(), read_owner(lock_dir), threading.Event()

    def beat():
        while not stop.is_set() and controller_gone(parent, owner) is None:
            write_heartbeat(lock_dir)
            stop.wait(HEARTBEAT_SECONDS)

    thread = threading.Thread(target=beat, name="berth-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def heartbeat_age(lock_dir):
    try:
        return time.time() - os.stat(os.path.join(lock_dir, HEARTBEAT_FILE)).st_mtime
    except OSError:
        return None


def _outcome_of(work):
    """``work()``'s outcome as a JSON-able dict; an unexpected error keeps its traceback for -vvv only."""
    try:
        return work()
    # Any error at all (a fail_json deep down included): the detached process must always leave an
    # outcome, and release the lock when nobody collects it.
    except (Exception, SystemExit) as exc:
        message = f"the host-side rollout failed unexpectedly: {exc}"
        return {"failed": True, "msg": message, "exception": traceback.format_exc()}


def _detach():
    """Become a daemon: new session, stdio on /dev/null, no inherited descriptors."""
    os.setsid()
    if os.fork():
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, 1024)


def _finish_alone(outcome, status_path, lock_dir, owner, foreground, heartbeat_timeout):
    """After the work: wait for the foreground to collect the outcome; when it does not (gone, or its
    heartbeat stale), keep the outcome for people and release the lock the work ran under."""
    deadline = time.monotonic() + heartbeat_timeout
    while os.path.exists(status_path) and time.monotonic() < deadline:
        age = heartbeat_age(lock_dir) if lock_dir else None
        if not pid_alive(foreground) or (age is not None and age > heartbeat_timeout):
            break
        time.sleep(POLL_SECONDS)
    if not os.path.exists(status_path):
        return
    state_dir = os.path.dirname(status_path)
    with contextlib.suppress(OSError):
        files.write_atomically(os.path.join(state_dir, LAST_OUTCOME), json.dumps(outcome) + "\n", 0o600)
    if lock_dir and read_owner(lock_dir) == owner:
        shutil.rmtree(lock_dir, ignore_errors=True)
    # A foreground that is only slow (its heartbeat late) still finds its outcome; a dead one never will.
    if not pid_alive(foreground):
        for path in (status_path, status_path + ".pid"):
            with contextlib.suppress(OSError):
                os.unlink(path)


def _worker_alive(pid_path):
    """False once the detached process that wrote ``pid_path`` is gone (True until it has written it)."""
    try:
        with open(pid_path, encoding="utf-8") as handle:
            return pid_alive(int(handle.read()))
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False


def run_detached(work, state_dir, lock_dir=None, heartbeat_timeout=15.0):
    """Run ``work()`` (returning the module's result as a dict) in a detached process and return its
    result; the caller's process only waits and writes the heartbeat. When the controller goes away
    first, this process exits and the detached one finishes alone."""
    os.makedirs(state_dir, exist_ok=True)
    status_path = os.path.join(state_dir, f".rollout-{os.getpid()}.json")
    pid_path = status_path + ".pid"
    owner = read_owner(lock_dir) if lock_dir else {}
    foreground, parent = os.getpid(), os.getppid()
    if lock_dir:
        write_heartbeat(lock_dir)
    child = os.fork()
    if child == 0:
        try:
            _detach()
            files.write_atomically(pid_path, f"{os.getpid()}\n", 0o600)
            if lock_dir:
                with contextlib.suppress(OSError):
                    files.write_atomically(os.path.join(lock_dir, ROLLOUT_PID_FILE), f"{os.getpid()}\n", 0o644)
            outcome = _outcome_of(work)
            files.write_atomically(status_path, json.dumps(outcome) + "\n", 0o600)
            _finish_alone(outcome, status_path, lock_dir, owner, foreground, heartbeat_timeout)
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    beat = 0.0
    while not os.path.exists(status_path):
        if not _worker_alive(pid_path) and not os.path.exists(status_path):
            return {"failed": True, "msg": "the host-side rollout process ended without a result (killed?)"}
        if controller_gone(parent, owner):
            # Nobody would read the result: the detached process finishes and releases the lock.
            os._exit(1)
        if lock_dir and time.monotonic() - beat >= HEARTBEAT_SECONDS:
            write_heartbeat(lock_dir)
            beat = time.monotonic()
        time.sleep(POLL_SECONDS / 2)
    with open(status_path, encoding="utf-8") as handle:
        outcome = json.load(handle)
    for path in (status_path, pid_path):
        with contextlib.suppress(OSError):
            os.unlink(path)
    if lock_dir:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(lock_dir, ROLLOUT_PID_FILE))
    return outcome
