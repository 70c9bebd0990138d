"""What the benchmarks that time ansible-playbook share: the CPU of this process's children, and one
run of a playbook against this machine."""

import resource
import subprocess
import sys
from pathlib import Path


def children_seconds():
    """CPU seconds (user and system) of this process's children that have ended."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def local_playbook(playbook, env, *arguments):
    """Run ansible-playbook (this virtualenv's) on `playbook` against this machine, connection local and
    this Python; exit with the end of its output when it fails."""
    argv = [sys.executable, str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local"]
    argv += ["-e", f"ansible_python_interpreter={sys.executable}", *arguments, str(playbook)]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"ansible-playbook failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
