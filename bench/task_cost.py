"""What one Ansible module task against a test host costs in CPU, by connection and bytecode cache.

Starts a container of the Debian 13 test-host image (berth/debian13-systemd, without systemd: only
its Python matters here) and runs a playbook of N `ansible.builtin.ping` tasks against it, once per
case, after one untimed task that warms the cache. Measures CPU time where each part runs, so that
other work on the machine counts little: the controller (ansible-playbook, its workers and the docker
client, from this process's children), the engine (this machine's dockerd and containerd, which may
also serve others at the time) and the host (the container's cgroup: the module's Python). Printed
per task, side by side with the wall time.

Cases: the docker CLI connection (community.docker.docker, one `docker exec` process per task) and
the Docker API connection (community.docker.docker_api, the socket); each with the image's bytecode
cache for zip imports (tests/images/systemd/berth_zipimport_cache.py) switched off (its .pth moved
aside) and on. The suite runs Molecule through the CLI with the cache on: the API connection now and
then returns an exec's output empty (see .config/molecule/config.yml).

Usage: python bench/task_cost.py [--tasks 50] [--rounds 2]
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGE = "berth/debian13-systemd:latest"
NAME = "berth-bench-tasks"
PTH = "/usr/lib/python3/dist-packages/berth-zipimport-cache.pth"
CASES = [
    ("docker CLI, no bytecode cache", "community.docker.docker", False),
    ("docker CLI, bytecode cache", "community.docker.docker", True),
    ("Docker API, no bytecode cache", "community.docker.docker_api", False),
    ("Docker API, bytecode cache", "community.docker.docker_api", True),
]
PLAYBOOK = """- hosts: all
  gather_facts: false
  tasks:
    - name: Ping
      ansible.builtin.ping:
      loop: "{{ range(tasks | int) | list }}"
"""


def docker(*argv, check=True):
    return subprocess.run(["docker", *argv], capture_output=True, text=True, check=check)


def daemon_seconds():
    """CPU seconds of this machine's dockerd and its containerd (not the test hosts' own engines)."""
    pids = [Path("/var/run/docker.pid").read_text().strip()]
    containerd = Path("/var/run/docker/containerd/containerd.pid")
    if containerd.exists():
        pids.append(containerd.read_text().strip())
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def container_seconds(container_id):
    """CPU seconds of the container's cgroup, on cgroup v1 or v2."""
    v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage")
    if v1.exists():
        return int(v1.read_text()) / 1e9
    stat = Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat").read_text()
    return int(stat.split("usage_usec")[1].split()[0]) / 1e6


def children_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def set_cache(enabled):
    aside = "/root/berth-zipimport-cache.pth"
    source, target = (aside, PTH) if enabled else (PTH, aside)
    docker("exec", NAME, "sh", "-c", f"if [ -e {source} ]; then mv {source} {target}; fi")
    docker("exec", NAME, "rm", "-rf", "/var/cache/berth-zipimport")


def play(workdir, connection, tasks):
    inventory = workdir / "inventory.ini"
    inventory.write_text(f"{NAME} ansible_connection={connection} ansible_python_interpreter=/usr/bin/python3\n")
    argv = ["ansible-playbook", "-i", str(inventory), str(workdir / "ping.yml"), "-e", f"tasks={tasks}"]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def measure(workdir, connection, tasks, container_id):
    """(controller, engine, host) CPU seconds and the wall time of one run of `tasks` tasks."""
    before = (children_seconds(), daemon_seconds(), container_seconds(container_id))
    started = time.monotonic()
    result = play(workdir, connection, tasks)
    wall = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"ansible-playbook failed ({connection}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    after = (children_seconds(), daemon_seconds(), container_seconds(container_id))
    return [end - start for start, end in zip(before, after, strict=True)], wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    docker("rm", "-f", NAME, check=False)
    container_id = docker("run", "-d", "--name", NAME, "--entrypoint", "sleep", IMAGE, "3600").stdout.strip()
    try:
        with tempfile.TemporaryDirectory() as directory:
            workdir = Path(directory)
            (workdir / "ping.yml").write_text(PLAYBOOK)
            print(f"{args.tasks} ping tasks per run, {args.rounds} rounds; CPU ms per task where it ran")
            print(f"{'case':32} {'controller':>10} {'engine':>7} {'host':>6} {'total':>6} {'wall ms/task':>13}")
            for _round in range(args.rounds):
                for label, connection, cache in CASES:
                    set_cache(cache)
                    play(workdir, connection, 1)
                    parts, wall = measure(workdir, connection, args.tasks, container_id)
                    controller, engine, host = (part * 1000 / args.tasks for part in parts)
                    print(
                        f"{label:32} {controller:10.0f} {engine:7.0f} {host:6.0f} {controller + engine + host:6.0f}"
                        f" {wall * 1000 / args.tasks:13.0f}",
                        flush=True,
                    )
    finally:
        docker("rm", "-f", NAME, check=False)


if __name__ == "__main__":
    os.environ.setdefault("ANSIBLE_STDOUT_CALLBACK", "default")
    main()
