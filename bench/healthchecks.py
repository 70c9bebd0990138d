"""What Docker healthchecks cost: the CPU a host spends on them and how soon a container is healthy.

Starts N demo frontend containers (berth/demo-frontend:v1, whose image checks itself with a Python
script every 2 s) on this machine's engine, once per setting, waits until all are healthy, then
measures the whole machine's CPU time (/proc/stat) over a window and subtracts an idle window measured
first. Printed side by side, per container: CPU seconds per minute, and the seconds to healthy.

Settings: the image's own HEALTHCHECK (every 2 s, the naive way), and the same every 2 s written the
usual way, with urllib.request under a plain python3 (what the images ran before their check was made
lighter: tests/fixtures/demo-app/app/healthcheck.py); every 30 s; every 30 s with a start interval of
0.5 s (what compose_app_healthcheck_defaults sets in the demo; needs Docker Engine 25, API 1.44, and is
reported as not measured on an older engine); no healthcheck (the floor).

Usage: python bench/healthchecks.py [--containers 10] [--window 30]
"""

import argparse
import subprocess
import time

IMAGE = "berth/demo-frontend:v1"
PREFIX = "berth-bench-hc"
URLLIB_CHECK = (
    "python3 -c 'import argparse, pathlib, urllib.request; "
    """print(urllib.request.urlopen("http://127.0.0.1:8000/healthz", timeout=2).read(200))'"""
)
SETTINGS = [
    ("image HEALTHCHECK, every 2 s", []),
    ("every 2 s, with urllib.request", ["--health-cmd", URLLIB_CHECK, "--health-interval", "2s"]),
    ("every 30 s", ["--health-interval", "30s"]),
    ("every 30 s, 0.5 s until healthy", ["--health-interval", "30s", "--health-start-interval", "500ms"]),
    ("no healthcheck", ["--no-healthcheck"]),
]


def docker(*argv, check=True):
    return subprocess.run(["docker", *argv], capture_output=True, text=True, check=check)


def busy_jiffies():
    """Jiffies the machine spent not idle (user, nice, system, irq, softirq) since boot."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(value) for value in handle.readline().split()[1:8]]
    return fields[0] + fields[1] + fields[2] + fields[5] + fields[6]


def cpu_seconds(window):
    before = busy_jiffies()
    time.sleep(window)
    return (busy_jiffies() - before) / 100


def remove_all():
    names = docker("ps", "-aq", "--filter", f"name={PREFIX}").stdout.split()
    if names:
        docker("rm", "-f", *names)


def run_setting(options, count, window, idle):
    started = time.monotonic()
    for index in range(count):
        docker("run", "-d", "--name", f"{PREFIX}-{index}", *options, IMAGE)
    names = [f"{PREFIX}-{index}" for index in range(count)]
    healthy_after = None
    if "--no-healthcheck" not in options:
        while time.monotonic() - started < 120:
            states = docker("inspect", "--format", "{{.State.Health.Status}}", *names).stdout.split()
            if states.count("healthy") == count:
                healthy_after = time.monotonic() - started
                break
            time.sleep(0.2)
    else:
        time.sleep(5)
    used = cpu_seconds(window) - idle
    remove_all()
    return used / count * 60 / window, healthy_after


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=10)
    parser.add_argument("--window", type=float, default=30)
    args = parser.parse_args()
    api = docker("version", "--format", "{{.Server.APIVersion}}").stdout.strip()
    major, minor = (int(part) for part in api.split("."))
    remove_all()
    idle = cpu_seconds(args.window)
    print(f"engine API {api}; {args.containers} containers of {IMAGE}; window {args.window:.0f} s; idle machine")
    print(f"{'setting':36} {'CPU s/min per container':>24} {'s to all healthy':>18}")
    print(f"{'idle machine (subtracted)':36} {idle * 60 / args.window:>24.2f} {'':>18}")
    for name, options in SETTINGS:
        if "--health-start-interval" in options and (major, minor) < (1, 44):
            print(f"{name:36} {'not measured: needs API 1.44':>43}")
            continue
        per_minute, healthy_after = run_setting(options, args.containers, args.window, idle)
        healthy = "-" if healthy_after is None else f"{healthy_after:.1f}"
        print(f"{name:36} {per_minute:>24.2f} {healthy:>18}")


if __name__ == "__main__":
    main()
