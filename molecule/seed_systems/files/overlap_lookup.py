"""While both colors of an app run (a rollout's overlap), ask the live color's container what a service
name resolves to, and compare with each color's container of that service. Bounded: at most
--max-seconds, until --stop-file appears. Prints a JSON summary: the samples taken while both colors ran,
and those that resolved to anything but the live color's own address."""

import argparse
import json
import os
import subprocess
import time

parser = argparse.ArgumentParser()
parser.add_argument("--app", required=True)
parser.add_argument("--live", choices=["blue", "green"], required=True)
parser.add_argument("--caller", required=True, help="the service that resolves the name, in the live color")
parser.add_argument("--name", required=True, help="the service name it resolves")
parser.add_argument("--max-seconds", type=float, default=180)
parser.add_argument("--stop-file", default="/run/berth-overlap-lookup.stop")
args = parser.parse_args()
other = "green" if args.live == "blue" else "blue"


def output(*argv):
    completed = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    return completed.stdout.strip() if completed.returncode == 0 else None


def address(color):
    """The address of the color's container of the service on that color's network, None when it is not running."""
    template = '{{if .State.Running}}{{(index .NetworkSettings.Networks "berth-%s-%s").IPAddress}}{{end}}'
    return (
        output("docker", "inspect", "--format", template % (args.app, color), f"{args.app}-{color}-{args.name}-1")
        or None
    )


samples, foreign = 0, []
started = time.monotonic()
while time.monotonic() - started < args.max_seconds and not os.path.exists(args.stop_file):
    own, theirs = address(args.live), address(other)
    resolved = output("docker", "exec", f"{args.app}-{args.live}-{args.caller}-1", "getent", "ahostsv4", args.name)
    # Counted only when both colors ran before and after the lookup: that is the overlap.
    if own and theirs and resolved is not None and (own, theirs) == (address(args.live), address(other)):
        samples += 1
        addresses = sorted({line.split()[0] for line in resolved.splitlines()})
        if addresses != [own]:
            foreign.append({"own": own, "other": theirs, "resolved": addresses})
    time.sleep(0.5)

print(json.dumps({"samples": samples, "foreign": foreign[:5], "seconds": round(time.monotonic() - started, 1)}))
