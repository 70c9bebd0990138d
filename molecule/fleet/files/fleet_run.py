"""Run one fleet deploy (ansible-playbook with the arguments given) with the ansible.posix.json callback
and print what the scenario asserts on, read from the task results, never from the text of the run: the
exit code, the closing failure message, the hosts the migration step ran on, each host's rollout
(release, changed, timings), each drain (load balancer, seconds, connections left), the changed
count per host and when each play started and ended."""

import json
import os
import subprocess
import sys

environment = dict(
    os.environ,
    ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
    # Only the JSON document on stdout: the scenario enables profile_tasks, which prints timings there too.
    ANSIBLE_CALLBACKS_ENABLED="ansible.posix.json",
)
run = subprocess.run(["ansible-playbook", *sys.argv[1:]], capture_output=True, text=True, env=environment, check=False)
try:
    document = json.loads(run.stdout)
except json.JSONDecodeError:
    print(json.dumps({"rc": run.returncode, "error": (run.stdout + run.stderr)[-3000:]}))
    sys.exit(0)

summary = {
    "rc": run.returncode,
    "failure": None,
    "migration_hosts": [],
    "rollouts": {},
    "drains": {},
    "changed": {host: stats.get("changed", 0) for host, stats in document["stats"].items()},
    "plays": [],
}
for play in document["plays"]:
    duration = play["play"].get("duration", {})
    summary["plays"].append([play["play"]["name"], duration.get("start"), duration.get("end")])
    for task in play["tasks"]:
        # Without the "<role> : " that names a role's task.
        name = task["task"]["name"].split(" : ", 1)[-1]
        for host, result in task["hosts"].items():
            if result.get("skipped"):
                continue
            if name == "Apply pending migrations with safe_migration":
                summary["migration_hosts"].append(host)
            elif name.startswith("Roll the release out behind nginx"):
                summary["rollouts"].setdefault(host, []).append(
                    {
                        "release": result.get("release"),
                        "changed": result.get("changed"),
                        "failed": result.get("failed", False),
                        "timings": result.get("timings"),
                    }
                )
            elif name.startswith("Mark this host at each load balancer"):
                summary["drains"].setdefault(host, []).extend(
                    {"lb": item["__compose_app_fleet_lb"], **item["drain"]}
                    for item in result.get("results", [])
                    if "drain" in item
                )
            elif name == "Fail with what failed and which host serves which release":
                summary["failure"] = result.get("msg")
print(json.dumps(summary))
