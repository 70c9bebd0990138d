"""The fleet's firewalls, which converge.yml's playbooks/deploy.yml applied to every host, checked from
outside: this test runs on the controller, the outer bridge's gateway, the one address allowed SSH. Every
connection is bounded (3 s) and goes only to the scenario's own containers."""

import json
import os
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import testinfra

HOSTS = ["fleet-lb", "fleet-1-app", "fleet-2-worker", "fleet-3-app"]


def remote(name):
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])


def network_settings(name):
    return json.loads(subprocess.check_output(["docker", "inspect", name]))[0]["NetworkSettings"]


def address(name):
    return network_settings(name)["IPAddress"]


def controller():
    """The outer bridge's gateway as a host's record names it: where this test and Ansible reach hosts from."""
    return network_settings("fleet-lb")["Gateway"]


def connect(host_address, port):
    """What a new TCP connection from the controller gets: open, refused or timeout."""
    try:
        socket.create_connection((host_address, port), timeout=3).close()
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    return "open"


def outside_view(ports):
    """connect() for each host's ports at once (the dropped ones each wait their 3 s): {host: {port: result}}."""
    pairs = [(name, port) for name, name_ports in ports.items() for port in name_ports]
    with ThreadPoolExecutor(len(pairs)) as pool:
        results = pool.map(lambda pair: connect(address(pair[0]), pair[1]), pairs)
    seen = {name: {} for name in ports}
    for (name, port), result in zip(pairs, results, strict=True):
        seen[name][port] = result
    return seen


@pytest.mark.parametrize("name", HOSTS)
def test_each_host_runs_its_confirmed_ruleset_and_no_revert_is_pending(name):
    host = remote(name)
    assert host.service("berth-firewall").is_enabled
    assert not host.service("berth-firewall-revert.timer").is_running
    confirmed = host.file("/etc/berth/firewall/berth.nft")
    assert confirmed.mode == 0o600
    assert f"tcp dport 22 ip saddr {{ {controller()}/32 }} accept" in confirmed.content_string
    web_rule = "tcp dport { 80, 443 } ip saddr { 0.0.0.0/0 } accept"
    assert (web_rule in confirmed.content_string) is (name != "fleet-2-worker")
    assert "policy drop;" in host.check_output("nft list chain inet berth input")


def test_the_load_balancer_and_the_app_hosts_answer_on_80_and_ssh_from_the_controller():
    seen = outside_view({name: (22, 80) for name in HOSTS if name != "fleet-2-worker"})
    assert seen == {name: {22: "open", 80: "open"} for name in seen}


def test_the_app_hosts_published_ports_are_not_reachable_from_outside():
    # Both colours' ports of the frontend (one serves): Docker's own rules would open them.
    seen = outside_view({name: (18011, 18021) for name in ("fleet-1-app", "fleet-3-app")})
    assert seen == {name: {18011: "timeout", 18021: "timeout"} for name in seen}


def test_ssh_is_refused_to_another_host_of_the_fleet():
    script = (
        "import socket, sys\n"
        "try:\n"
        "    socket.create_connection((sys.argv[1], 22), timeout=3)\n"
        "    print('open')\n"
        "except TimeoutError:\n"
        "    print('timeout')\n"
    )
    assert remote("fleet-lb").check_output("python3 -c %s %s", script, address("fleet-2-worker")) == "timeout"


def test_the_worker_only_host_drops_port_80_even_when_something_listens_there():
    worker = remote("fleet-2-worker")
    worker.check_output(
        "systemd-run --unit=berth-fleet-listener --property=RuntimeMaxSec=60 python3 -m http.server --bind 0.0.0.0 80"
    )
    try:
        deadline = time.monotonic() + 15
        while not worker.socket("tcp://0.0.0.0:80").is_listening:
            assert time.monotonic() < deadline, "the test listener did not start"
            time.sleep(0.5)
        inside = worker.check_output(
            "python3 -c %s",
            "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1/', timeout=3).status)",
        )
        assert inside == "200"
        assert outside_view({"fleet-2-worker": (80, 22)}) == {"fleet-2-worker": {80: "timeout", 22: "open"}}
    finally:
        worker.run("systemctl stop berth-fleet-listener")
