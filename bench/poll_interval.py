"""What ansible-playbook's main process costs while it waits for tasks, at two internal poll intervals.

While any task runs, ansible-core's main process wakes every `internal_poll_interval` seconds to look
for results (ansible-core's default: 1 ms); a finished task is noticed up to one interval later. The
project's ansible.cfg (and Molecule's, .config/molecule/config.yml) raise it. This runs two playbooks
against this machine (connection local) under each setting, alternating, ROUNDS times, and prints
the CPU of each run (ansible-playbook, its workers and the modules, all children of this process) and
its wall time, side by side:
  - one task that runs for WAIT seconds (a module waiting, as a health gate or a migration does);
  - TASKS trivial tasks, one after the other (where the interval adds latency to every task).

Usage: python bench/poll_interval.py [--rounds 3] [--wait 8] [--tasks 150]
"""

import argparse
import configparser
import os
import tempfile
import time
from pathlib import Path

from _measure import children_seconds, local_playbook

REPO = Path(__file__).resolve().parents[1]
ANSIBLE_CORE_DEFAULT = 0.001


def project_interval():
    config = configparser.ConfigParser()
    config.read(REPO / "ansible.cfg")
    return config.getfloat("defaults", "internal_poll_interval")


def playbooks(workdir, wait, tasks):
    head = "- name: Bench\n  hosts: localhost\n  gather_facts: false\n  tasks:\n"
    waiting = workdir / "wait.yml"
    sleep = f"{{name: Wait, ansible.builtin.command: {{argv: [sleep, '{wait}']}}, changed_when: false}}"
    waiting.write_text(f"{head}    - {sleep}\n")
    many = workdir / "many.yml"
    trivial = (f"    - {{name: Task {n}, ansible.builtin.debug: {{msg: '{n}'}}}}\n" for n in range(tasks))
    many.write_text(head + "".join(trivial))
    return [(f"one task of {wait} s", waiting), (f"{tasks} trivial tasks", many)]


def run(playbook, config):
    env = {**os.environ, "ANSIBLE_CONFIG": str(config), "ANSIBLE_STDOUT_CALLBACK": "default"}
    cpu, started = children_seconds(), time.monotonic()
    local_playbook(playbook, env)
    return children_seconds() - cpu, time.monotonic() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--wait", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=150)
    args = parser.parse_args()
    intervals = [ANSIBLE_CORE_DEFAULT, project_interval()]
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        configs = {}
        for interval in intervals:
            configs[interval] = workdir / f"poll-{interval}.cfg"
            configs[interval].write_text(f"[defaults]\ninternal_poll_interval = {interval}\n")
        cases = playbooks(workdir, args.wait, args.tasks)
        # One untimed run first, so that the first timed one does not pay for cold file caches.
        run(cases[1][1], configs[intervals[0]])
        print(f"{args.rounds} rounds; per run: CPU s (ansible-playbook, workers, modules) and wall s")
        print(f"{'playbook':24} {'interval':>9} {'CPU s':>7} {'wall s':>7}")
        for _round in range(args.rounds):
            for label, playbook in cases:
                for interval in intervals:
                    cpu, wall = run(playbook, configs[interval])
                    print(f"{label:24} {interval:9.3f} {cpu:7.2f} {wall:7.2f}", flush=True)


if __name__ == "__main__":
    main()
