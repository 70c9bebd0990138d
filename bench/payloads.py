"""What building module payloads costs the controller across ansible-playbook runs, and what sharing them saves.

ansible-core builds each module's AnsiballZ payload (the module and every module_utils file it imports,
found by parsing their sources) once per ansible-playbook process. `make test` starts a few hundred of
them, and shares their payloads through tests/harness/callback_plugins/berth_shared_payloads.py.

Runs the same playbook (one task each of eight modules that berth's roles use, against this machine
with connection local) RUNS times per case and prints the CPU of the runs (ansible-playbook, its
workers and the modules, all children of this process) per run, side by side:
  - each run builds its payloads (ansible-core's default);
  - the runs share one payload directory (the harness callback), warmed by one untimed run first;
  - each run builds its payloads, and the modules' Python has no bytecode cache for zip imports
    (the project virtualenv's berth-zipimport-cache.pth moved aside for the run), as before prepare.py
    installed it.

Usage: python bench/payloads.py [--runs 10]
"""

import argparse
import os
import shutil
import sysconfig
import tempfile
import time
from pathlib import Path

from _measure import children_seconds, local_playbook

REPO = Path(__file__).resolve().parents[1]
CALLBACKS = REPO / "tests" / "harness" / "callback_plugins"
PTH = Path(sysconfig.get_path("purelib")) / "berth-zipimport-cache.pth"
PLAYBOOK = """- name: One task of each of eight modules
  hosts: localhost
  gather_facts: false
  tasks:
    - {name: Ping, ansible.builtin.ping: {}}
    - {name: Stat, ansible.builtin.stat: {path: "{{ workdir }}"}}
    - {name: Directory, ansible.builtin.file: {path: "{{ workdir }}/d", state: directory, mode: "0700"}}
    - {name: Copy, ansible.builtin.copy: {content: "x\\n", dest: "{{ workdir }}/d/x", mode: "0600"}}
    - {name: Command, ansible.builtin.command: {argv: ["true"]}, changed_when: false}
    - {name: Slurp, ansible.builtin.slurp: {src: "{{ workdir }}/d/x"}}
    - {name: Find, ansible.builtin.find: {paths: "{{ workdir }}"}}
    - {name: Engine, community.docker.docker_host_info: {}}
"""


def play(workdir, env):
    local_playbook(workdir / "play.yml", env, "-e", f"workdir={workdir}")


def measure(workdir, env, runs):
    """CPU seconds and wall seconds per run, over `runs` runs."""
    cpu, started = children_seconds(), time.monotonic()
    for _run in range(runs):
        play(workdir, env)
    return (children_seconds() - cpu) / runs, (time.monotonic() - started) / runs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    base = {key: value for key, value in os.environ.items() if key != "BERTH_ANSIBALLZ_CACHE"}
    base["ANSIBLE_STDOUT_CALLBACK"] = "default"
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        (workdir / "play.yml").write_text(PLAYBOOK)
        shared = {**base, "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACKS), "BERTH_ANSIBALLZ_CACHE": str(workdir / "shared")}
        play(workdir, shared)
        play(workdir, base)
        print(f"{args.runs} ansible-playbook runs per case, 8 module tasks each (connection local); per run:")
        print(f"{'case':58} {'CPU s':>6} {'wall s':>7}")
        cases = [
            ("each run builds its payloads", base, True),
            ("the runs share their payloads (make test's callback)", shared, True),
            ("each run builds its payloads, no zipimport bytecode cache", base, False),
        ]
        for label, env, zip_cache in cases:
            aside = workdir / PTH.name
            if not zip_cache and PTH.exists():
                shutil.move(PTH, aside)
            try:
                cpu, wall = measure(workdir, env, args.runs)
            finally:
                if aside.exists():
                    shutil.move(aside, PTH)
            print(f"{label:58} {cpu:6.2f} {wall:7.2f}", flush=True)


if __name__ == "__main__":
    main()
