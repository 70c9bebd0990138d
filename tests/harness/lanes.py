"""Run `make test`'s stages in lanes side by side: the stages of one lane run in order, the lanes at
the same time. Each lane writes its whole output to tests/output/lane-<name>.log; this prints the
stage start and result lines as they come, then every lane's log in full, then, for a failed lane,
the lines that say what failed (pytest's FAILED/ERROR lines, Ansible's fatal/failed lines, each after
the header of its task, which a result censored by no_log does not name) and the
last lines of the failed stage, so that a reader who sees only the head and tail of the output sees
the failure; then the stage times.

A lane stops at its first failed stage; the other lanes run to their end, so one run reports every
failure. Every Molecule scenario under molecule/ must be in exactly one lane: a scenario that was
added to the tree but not to a lane fails the run instead of being skipped.

Each stage gets its own apt archive cache for its test hosts (BERTH_APT_CACHE_DIR, named after the
stage), because two test hosts that run apt at the same time must not share /var/cache/apt/archives
and its lock; named after the stage, not the lane, a scenario finds its downloads again whichever lane
it runs in.

The stages' ansible-playbook runs share one cache of module payloads (tests/harness/callback_plugins),
in a directory made for this run and removed at its end.

Usage: lanes.py --lane NAME=STAGE[,STAGE...] [--lane ...]
A stage is a make target (lint, sanity, unit) or molecule:SCENARIO. Standard library only.
"""

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "tests" / "output"
STAGE = REPO / "tests" / "harness" / "stage.sh"
APT_CACHE = "/var/cache/berth-test/apt"
CALLBACKS = REPO / "tests" / "harness" / "callback_plugins"
TAIL_LINES = 60
FAILURE_LINES = 40
BRIEF_LINES = 8
BRIEF_WIDTH = 1500
# pytest's short summary (`FAILED tests/...::test - ...`, `ERROR ...`) and Ansible's failed tasks, but not
# Ansible's `FAILED - RETRYING` of an `until` loop, which may still pass.
ANSIBLE_FAILURE = re.compile(r"^(fatal|failed): \[")
FAILURE_LINE = re.compile(rf"^(FAILED|ERROR) (?!- RETRYING)|{ANSIBLE_FAILURE.pattern}")
# Ansible's task header: a failed task's result (censored under no_log) does not name the task.
TASK_HEADER = re.compile(r"^TASK \[")


def is_progress(line: str) -> bool:
    """stage.sh's start line and its result line (`  NAME  ok  12s` or `  NAME  FAILED ...`)."""
    return line.startswith("== stage ") or (line.startswith("  ") and (" ok " in line or " FAILED " in line))


def stage_command(stage: str) -> list[str]:
    """The command of one stage; it records its own time in $BERTH_STAGE_RECORD through stage.sh."""
    make = ["make", "--no-print-directory"]
    if stage.startswith("molecule:"):
        # `make molecule` wraps each scenario in stage.sh itself.
        return [*make, "molecule", f"SCENARIO={stage.removeprefix('molecule:')}"]
    return [str(STAGE), stage, *make, stage]


def apt_cache(stage: str) -> str:
    """The apt archive cache directory of one stage's test hosts: /var/cache/berth-test/apt-<stage>."""
    return f"{APT_CACHE}-{re.sub(r'[^A-Za-z0-9_.-]', '_', stage.removeprefix('molecule:'))}"


def payload_cache_env(directory: str) -> dict[str, str]:
    """The environment that makes every ansible-playbook run of the stages share one payload cache in
    directory (tests/harness/callback_plugins/berth_shared_payloads.py says why)."""
    plugins = os.environ.get("ANSIBLE_CALLBACK_PLUGINS", "")
    return {
        "BERTH_ANSIBALLZ_CACHE": directory,
        "ANSIBLE_CALLBACK_PLUGINS": f"{CALLBACKS}:{plugins}" if plugins else str(CALLBACKS),
    }


def parse_lanes(specs: list[str]) -> dict[str, list[str]]:
    lanes: dict[str, list[str]] = {}
    for spec in specs:
        name, _sep, stages = spec.partition("=")
        if not name or not stages or name in lanes:
            raise SystemExit(f"lanes.py: --lane {spec!r}: expected a new NAME=STAGE[,STAGE...]")
        lanes[name] = [stage for stage in stages.split(",") if stage]
    return lanes


def check_scenarios(lanes: dict[str, list[str]]) -> None:
    """Every scenario in molecule/ runs in exactly one lane, and every scenario named exists."""
    present = {path.parent.name for path in (REPO / "molecule").glob("*/molecule.yml")}
    named = [
        stage.removeprefix("molecule:")
        for stages in lanes.values()
        for stage in stages
        if stage.startswith("molecule:")
    ]
    problems = []
    if missing := sorted(present - set(named)):
        problems.append(f"scenarios in no lane: {', '.join(missing)}")
    if unknown := sorted(set(named) - present):
        problems.append(f"scenarios that do not exist: {', '.join(unknown)}")
    if twice := sorted({name for name in named if named.count(name) > 1}):
        problems.append(f"scenarios in more than one lane: {', '.join(twice)}")
    if problems:
        raise SystemExit("lanes.py: " + "; ".join(problems))


class Lane(threading.Thread):
    def __init__(self, name, stages, print_lock, *, log_dir=OUTPUT, command=stage_command, env=None):
        super().__init__(name=name)
        self.stages = stages
        self.env = env or {}
        self.print_lock = print_lock
        self.command = command
        self.log = Path(log_dir) / f"lane-{name}.log"
        self.failed: str | None = None
        # The last lines that name a failure: a run stops at its real failure, after any that a task ignored.
        self.failure_lines: collections.deque[str] = collections.deque(maxlen=FAILURE_LINES)
        self.task_header = ""
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.process: subprocess.Popen | None = None
        self.stopping = False

    def run(self) -> None:
        with self.log.open("w") as log:
            for stage in self.stages:
                env = dict(os.environ, **self.env, BERTH_APT_CACHE_DIR=apt_cache(stage))
                if self.stopping:
                    self.failed = f"{stage} (not started: interrupted)"
                    self.tail.clear()
                    self.failure_lines.clear()
                    return
                self.tail.clear()
                self.failure_lines.clear()
                self.task_header = ""
                self.process = subprocess.Popen(
                    self.command(stage),
                    cwd=REPO,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    errors="replace",
                    start_new_session=True,
                )
                for line in self.process.stdout:
                    log.write(line)
                    log.flush()
                    self.tail.append(line)
                    self.note_failure(line)
                    if is_progress(line):
                        self.say(line.rstrip())
                if self.process.wait():
                    self.failed = stage
                    self.say(f"FAILED: {stage} (exit {self.process.returncode}); this lane stops here")
                    return

    def note_failure(self, line: str) -> None:
        """Keep a line that names a failure; before an Ansible failure, the header of its task, once."""
        if TASK_HEADER.match(line):
            self.task_header = line.rstrip("* \n") + "\n"
        if not FAILURE_LINE.match(line):
            return
        if ANSIBLE_FAILURE.match(line) and self.task_header:
            self.failure_lines.append(self.task_header)
            self.task_header = ""
        self.failure_lines.append(line)

    def say(self, text: str) -> None:
        with self.print_lock:
            print(f"[{self.name}] {text}", flush=True)

    def stop(self) -> None:
        self.stopping = True
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)


def report_failures(threads: list[Lane]) -> None:
    """For each failed lane: the lines that name the failure, then the failed stage's last lines."""
    for thread in threads:
        if thread.failed:
            print(f"\n==== lane {thread.name}: what failed in {thread.failed}", flush=True)
            sys.stdout.writelines(thread.failure_lines or ["(no FAILED/ERROR/fatal line)\n"])
            print(f"==== lane {thread.name}: the last {len(thread.tail)} lines of {thread.failed}", flush=True)
            sys.stdout.writelines(thread.tail)
            sys.stdout.flush()


def write_brief(threads: list[Lane], path: Path) -> None:
    """failures.txt: per failed lane, its stage and its last failure lines, each cut to BRIEF_WIDTH."""
    path.unlink(missing_ok=True)
    brief = []
    for thread in threads:
        if thread.failed:
            brief.append(f"==== what failed: lane {thread.name}, {thread.failed}\n")
            last = list(thread.failure_lines)[-BRIEF_LINES:]
            for line in last or ["(no FAILED/ERROR/fatal line; see the lane's log)\n"]:
                line = line.rstrip("\n")
                brief.append((line[:BRIEF_WIDTH] + " [...]" if len(line) > BRIEF_WIDTH else line) + "\n")
    if brief:
        path.write_text("".join(brief))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lane", action="append", required=True, metavar="NAME=STAGE[,STAGE...]")
    lanes = parse_lanes(parser.parse_args(argv).lane)
    check_scenarios(lanes)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    print_lock = threading.Lock()
    payloads = tempfile.mkdtemp(prefix="berth-payloads-")
    threads = [Lane(name, stages, print_lock, env=payload_cache_env(payloads)) for name, stages in lanes.items()]

    def interrupt(signum, _frame):
        for thread in threads:
            thread.stop()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    try:
        for thread in threads:
            thread.say(f"stages: {' '.join(thread.stages)}; full output in {thread.log.relative_to(REPO)}")
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        shutil.rmtree(payloads, ignore_errors=True)
    for thread in threads:
        print(f"\n==== lane {thread.name}: full output ({thread.log.relative_to(REPO)})", flush=True)
        sys.stdout.write(thread.log.read_text(errors="replace"))
    report_failures(threads)
    write_brief(threads, OUTPUT / "failures.txt")
    failed = [f"{thread.name}: {thread.failed}" for thread in threads if thread.failed]
    if failed:
        print(f"\n==== failed: {'; '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
