"""What one Ansible task against a test host costs in CPU, by connection and bytecode cache.

Starts a container of the Debian 13 test-host image (berth/debian13-systemd, without systemd: only
its Python and its sshd matter here) and runs a playbook of N tasks against it, once per case and
kind of task, after one untimed task that warms the cache. Two kinds: `ansible.builtin.ping` (one
module run) and `ansible.builtin.template` of an unchanged file (a file task: a temporary directory
on the host, a stat module, then its removal). Measures CPU time where each part runs: the
controller (ansible-playbook, its workers and the docker or ssh client, from this process's
children), the engine (this machine's dockerd and containerd), the host (the container's cgroup: the
module's Python, sshd) and the whole machine (/proc/stat, which also counts what the others miss:
containerd-shim and runc for each `docker exec`, the kernel, and the SSH connection's master, which
runs detached). Run it on an otherwise idle machine. Printed per task, side by side with the wall time.

Cases: the docker CLI connection (community.docker.docker, one `docker exec` process per command)
and the Docker API connection (community.docker.docker_api, the socket), each with the image's
bytecode cache for zip imports (tests/images/systemd/berth_zipimport_cache.py) switched off (its .pth
moved aside) and on; and SSH (one connection kept open, ControlPersist, as Molecule's inventory
has it) with the cache on, with /usr/bin/python3 and with berth-python (each module forked from a
warm interpreter, as Molecule's ansible.cfg has it too). The suite runs Molecule over SSH with the cache
and berth-python; the firewall scenario, which cuts SSH on purpose, through the CLI (see
.config/molecule/config.yml).

Usage: python bench/task_cost.py [--tasks 50] [--rounds 2]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _measure import children_seconds

IMAGE = "berth/debian13-systemd:latest"
NAME = "berth-bench-tasks"
PTH = "/usr/lib/python3/dist-packages/berth-zipimport-cache.pth"
PYTHON = "/usr/bin/python3"
# The test-host images' berth-python: each module forked from a warm interpreter (tests/images/systemd/
# berth_python_server.py), as Molecule's ansible.cfg (interpreter_python) has it.
BERTH_PYTHON = "/usr/local/bin/berth-python"
CASES = [
    ("docker CLI, no bytecode cache", "community.docker.docker", False, PYTHON),
    ("docker CLI, bytecode cache", "community.docker.docker", True, PYTHON),
    ("Docker API, no bytecode cache", "community.docker.docker_api", False, PYTHON),
    ("Docker API, bytecode cache", "community.docker.docker_api", True, PYTHON),
    ("SSH, bytecode cache", "ssh", True, PYTHON),
    ("SSH, bytecode cache, berth-python", "ssh", True, BERTH_PYTHON),
]
PLAYBOOKS = {
    "ping": """- hosts: all
  gather_facts: false
  tasks:
    - name: Ping
      ansible.builtin.ping:
      loop: "{{ range(tasks | int) | list }}"
""",
    "template": """- hosts: all
  gather_facts: false
  tasks:
    - name: Template an unchanged file
      ansible.builtin.template:
        src: bench.j2
        dest: /tmp/berth-bench.txt
        mode: "0644"
      loop: "{{ range(tasks | int) | list }}"
""",
}
SSH_OPTIONS = (
    "-o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no"
    " -o IdentitiesOnly=yes -o LogLevel=ERROR"
)


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


def machine_seconds():
    """Busy CPU seconds of the whole machine (every core), from /proc/stat."""
    fields = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def set_cache(enabled):
    aside = "/root/berth-zipimport-cache.pth"
    source, target = (aside, PTH) if enabled else (PTH, aside)
    docker("exec", NAME, "sh", "-c", f"if [ -e {source} ]; then mv {source} {target}; fi")
    docker("exec", NAME, "rm", "-rf", "/var/cache/berth-zipimport")


def start_sshd(workdir):
    """Let root in with a key made here, start the image's sshd, and return the container's address."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(workdir / "key")], check=True)
    docker("exec", NAME, "mkdir", "-p", "-m", "0700", "/root/.ssh", "/run/sshd")
    docker("cp", str(workdir / "key.pub"), f"{NAME}:/root/.ssh/authorized_keys")
    docker("exec", NAME, "sh", "-c", "chown root:root /root/.ssh/authorized_keys && /usr/sbin/sshd")
    return docker("inspect", "--format", "{{.NetworkSettings.IPAddress}}", NAME).stdout.strip()


def play(workdir, connection, kind, tasks, address, interpreter=PYTHON):
    inventory = workdir / "inventory.ini"
    target = f"{NAME} ansible_connection={connection} ansible_python_interpreter={interpreter}"
    if connection == "ssh":
        target += (
            f" ansible_host={address} ansible_user=root ansible_ssh_private_key_file={workdir / 'key'}"
            f" ansible_ssh_common_args='{SSH_OPTIONS} -o ControlPath={workdir}/cm-%C'"
        )
    inventory.write_text(target + "\n")
    argv = ["ansible-playbook", "-i", str(inventory), str(workdir / f"{kind}.yml"), "-e", f"tasks={tasks}"]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def measure(workdir, connection, kind, tasks, container_id, address, interpreter):
    """(controller, engine, host, machine) CPU seconds and the wall time of one run of `tasks` tasks."""
    before = (children_seconds(), daemon_seconds(), container_seconds(container_id), machine_seconds())
    started = time.monotonic()
    result = play(workdir, connection, kind, tasks, address, interpreter)
    wall = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"ansible-playbook failed ({connection}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    after = (children_seconds(), daemon_seconds(), container_seconds(container_id), machine_seconds())
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
            for kind, playbook in PLAYBOOKS.items():
                (workdir / f"{kind}.yml").write_text(playbook)
            (workdir / "bench.j2").write_text("{{ inventory_hostname }}\n")
            address = start_sshd(workdir)
            # No systemd in this container: start berth-python's server as berth-python.service would.
            docker("exec", "-d", NAME, "python3", "/usr/local/lib/berth-python/server.py")
            print(f"{args.tasks} tasks per run, {args.rounds} rounds; CPU ms per task where it ran")
            print(
                f"{'task':9} {'case':34} {'controller':>10} {'engine':>7} {'host':>6} {'sum':>6} {'machine':>8}"
                f" {'wall ms/task':>13}"
            )
            for _round in range(args.rounds):
                for kind in PLAYBOOKS:
                    for label, connection, cache, interpreter in CASES:
                        set_cache(cache)
                        play(workdir, connection, kind, 1, address, interpreter)
                        parts, wall = measure(workdir, connection, kind, args.tasks, container_id, address, interpreter)
                        controller, engine, host, machine = (part * 1000 / args.tasks for part in parts)
                        print(
                            f"{kind:9} {label:34} {controller:10.0f} {engine:7.0f} {host:6.0f}"
                            f" {controller + engine + host:6.0f} {machine:8.0f} {wall * 1000 / args.tasks:13.0f}",
                            flush=True,
                        )
    finally:
        docker("rm", "-f", NAME, check=False)


if __name__ == "__main__":
    os.environ.setdefault("ANSIBLE_STDOUT_CALLBACK", "default")
    # As Molecule's configuration has it: no compression (ansible's default -C) on a local bridge.
    os.environ.setdefault("ANSIBLE_SSH_ARGS", "-o ControlMaster=auto -o ControlPersist=60s")
    main()
