"""What the deploy playbooks refuse before anything changes, run as a user runs them (ansible-playbook on
playbooks/app.yml and rollback.yml) on an inventory of local hosts in a fleet's shape: its checks come
first and need no test host, and a run that got past them would write the fleet lock and the upstream
file under tmp_path, which the tests look for.

- A fleet deploy or rollback with --limit that leaves out a Docker host is refused by its first task,
  naming the hosts left out; a --limit that keeps every Docker host passes that check.
- Several Docker hosts without a load balancer deploy in one batch with max_fail_percentage 0: one host
  whose variables are refused stops every host of the batch before any of them goes further.
- The batch size is a count or a percentage; anything else is refused by name.
- While another deploy holds the fleet's lock, a deploy is refused naming the holder, and leaves that
  lock as it found it."""

import json
import os
import subprocess
import sys

import pytest
from role_tasks import BIN, REPO

SERVICES = [{"name": "web", "image": "demo/web:v1", "container_port": 8000, "ports": {"blue": 18011, "green": 18021}}]


def app_variables(tmp_path):
    return {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        # Local hosts: the plays' become would ask for sudo.
        "ansible_become": False,
        "compose_app_name": "demo",
        "compose_app_release": "v1",
        "compose_app_services": SERVICES,
        "compose_app_root": str(tmp_path / "srv"),
        "compose_app_fleet_lock_root": str(tmp_path / "fleet-locks"),
    }


def fleet_inventory(tmp_path, load_balancers=True, app2=None):
    names = ["app1", "app2", "worker1"]
    hosts = {name: {"compose_app_fleet_address": f"10.0.0.{n}"} for n, name in enumerate(names, 11)}
    hosts["app2"].update(app2 or {})
    groups = {
        "docker_hosts": {
            "children": {
                "app_hosts": {"hosts": {"app1": hosts["app1"], "app2": hosts["app2"]}},
                "worker_hosts": {"hosts": {"worker1": hosts["worker1"]}},
            }
        }
    }
    if load_balancers:
        groups["load_balancers"] = {
            "hosts": {
                "lb1": {
                    "nginx_upstreams_dir": str(tmp_path / "upstreams"),
                    "nginx_sites": [{"name": "demo", "locations": [{"path": "/", "upstream": "demo_fleet"}]}],
                }
            }
        }
    inventory = {"all": {"vars": app_variables(tmp_path), "children": groups}}
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(inventory))
    return path


def run_playbook(tmp_path, playbook, inventory, *arguments):
    """(exit code, ansible.posix.json document) of one ansible-playbook run."""
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.json",
    }
    argv = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(REPO / "playbooks" / playbook), *arguments]
    run = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=False)
    try:
        return run.returncode, json.loads(run.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"no JSON from ansible-playbook (rc {run.returncode}): {(run.stdout + run.stderr)[-3000:]}")


def failures(document):
    """(task name without its role, host, message) of every failed task result, in order."""
    return [
        (task["task"]["name"].split(" : ", 1)[-1], host, result.get("msg"))
        for play in document["plays"]
        for task in play["tasks"]
        for host, result in task["hosts"].items()
        if result.get("failed")
    ]


def task_hosts(document, name):
    """The hosts that ran (not skipped) the task of that name."""
    return sorted(
        host
        for play in document["plays"]
        for task in play["tasks"]
        if task["task"]["name"].split(" : ", 1)[-1] == name
        for host, result in task["hosts"].items()
        if not result.get("skipped")
    )


def nothing_written(tmp_path):
    return [path.name for path in (tmp_path / "srv", tmp_path / "fleet-locks", tmp_path / "upstreams") if path.exists()]


@pytest.mark.parametrize(
    ("playbook", "purpose"),
    [("app.yml", "fleet deploy of release v1"), ("rollback.yml", "fleet rollback to the previous release")],
)
def test_a_fleet_run_with_a_limit_that_leaves_out_docker_hosts_is_refused_before_anything_changes(
    tmp_path, playbook, purpose
):
    rc, document = run_playbook(tmp_path, playbook, fleet_inventory(tmp_path), "--limit", "app2")
    assert rc != 0
    [(task, host, message)] = failures(document)
    assert (task, host) == ("The fleet's plays run on every Docker host", "app2")
    assert message.startswith(f"--limit app2 leaves app1, worker1 out of this {purpose}.")
    assert "the migrations run once on app1" in message
    assert task_hosts(document, "The app's name, the release id and the history length are valid") == []
    assert all(stats["changed"] == 0 for stats in document["stats"].values())
    assert nothing_written(tmp_path) == []


def test_a_limit_that_keeps_every_docker_host_passes_that_check(tmp_path):
    # Without the load balancer (only delegated to), and with a bad fleet variable that the next check
    # refuses: the run stops there, past the limit's check, still before anything changes.
    arguments = ["--limit", "docker_hosts", "-e", "compose_app_fleet_drain_timeout=-1"]
    rc, document = run_playbook(tmp_path, "app.yml", fleet_inventory(tmp_path), *arguments)
    assert rc != 0
    assert task_hosts(document, "The fleet's plays run on every Docker host") == ["app1"]
    assert {(task, message) for task, _host, message in failures(document)} == {
        ("The fleet's variables are usable", "compose_app_fleet_drain_timeout=-1: must be at least 0")
    }
    assert nothing_written(tmp_path) == []


def test_without_load_balancers_one_host_refused_stops_the_batch_before_the_others_go_further(tmp_path):
    inventory = fleet_inventory(tmp_path, load_balancers=False, app2={"compose_app_release": "no spaces allowed"})
    rc, document = run_playbook(tmp_path, "app.yml", inventory)
    assert rc != 0
    assert task_hosts(document, "The fleet's plays run on every Docker host") == []
    first_check = "The app's name, the release id and the history length are valid"
    assert [(task, host) for task, host, _message in failures(document)] == [(first_check, "app2")]
    # The others passed that check in the same batch, and went no further (max_fail_percentage 0).
    assert task_hosts(document, first_check) == ["app1", "app2", "worker1"]
    assert task_hosts(document, "The app has services to deploy") == []
    assert nothing_written(tmp_path) == []


@pytest.mark.parametrize(("serial", "refused"), [("50%", False), ("2", False), ("half", True), ("0", True)])
def test_the_batch_size_is_a_count_or_a_percentage(tmp_path, serial, refused):
    # A bad drain timeout stops every run at the same check, so the run changes nothing either way.
    arguments = ["-e", f"compose_app_fleet_serial={serial}", "-e", "compose_app_fleet_drain_timeout=-1"]
    rc, document = run_playbook(tmp_path, "app.yml", fleet_inventory(tmp_path), *arguments)
    assert rc != 0
    expected = ["compose_app_fleet_drain_timeout=-1: must be at least 0"]
    if refused:
        expected.append(f"compose_app_fleet_serial={serial}: a count above 0 or a percentage such as 50%")
    assert {(task, message) for task, _host, message in failures(document)} == {
        ("The fleet's variables are usable", "; ".join(expected))
    }
    assert nothing_written(tmp_path) == []


def test_a_deploy_is_refused_while_another_holds_the_fleet_lock_and_leaves_that_lock_alone(tmp_path):
    lock = tmp_path / "fleet-locks" / "demo.lock"
    lock.mkdir(parents=True)
    owner = '{"purpose": "deploy of release v7", "controller": "ci-runner-3", "user": "alice"}\n'
    (lock / "owner").write_text(owner)
    rc, document = run_playbook(tmp_path, "app.yml", fleet_inventory(tmp_path))
    assert rc != 0
    [(task, _host, message)] = failures(document)
    assert task == "Refuse the deploy while another one holds the fleet's lock"
    assert message.startswith(f"another deploy of demo across the fleet holds {lock} on lb1 ({owner.strip()}).")
    assert (lock / "owner").read_text() == owner
    assert [path.name for path in (tmp_path / "srv", tmp_path / "upstreams") if path.exists()] == []
