"""The firewall, checked from outside: real connections from the scenario's two client containers.

firewall-client-allowed (10.231.57.11) is in the SSH allow list, firewall-client-denied (.12) is not.
Every connection is bounded (3 s); the crafted packets go only to the test host's MAC address.
"""

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import testinfra

testinfra_hosts = ["docker://firewall-debian13"]

HOST_ADDRESS = "10.231.57.2"
ALLOWED_CLIENT = "10.231.57.11"


def client(name):
    return testinfra.get_host(f"docker://{name}")


def probe(name, *ports):
    """What each port of the test host does for a new connection from the client: open, refused or timeout."""
    result = client(name).check_output(
        "python3 /usr/local/bin/berth-fw-probe tcp %s " + " ".join(["%s"] * len(ports)), HOST_ADDRESS, *map(str, ports)
    )
    return json.loads(result)


def crafted_replies(port):
    """Replies to SYNs sent by the denied client to 127.0.0.1:port at the host's MAC address."""
    result = client("firewall-client-denied").check_output(
        "python3 /usr/local/bin/berth-fw-probe crafted %s %s", HOST_ADDRESS, str(port)
    )
    return json.loads(result)["received"]


def record(text):
    output_dir = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", ".")) / "tests" / "output"
    output_dir.mkdir(parents=True, exist_ok=True)
    with (output_dir / "firewall-scan.txt").open("a") as handle:
        handle.write(text + "\n")


def assert_outside_view():
    """The whole contract as the network sees it; run again after each restart."""
    ports = (22, 80, 443, 18080, 18081, 9100)
    with ThreadPoolExecutor(3) as pool:
        allowed, denied, replies = pool.map(
            lambda probe_once: probe_once(),
            [
                lambda: probe("firewall-client-allowed", *ports),
                lambda: probe("firewall-client-denied", *ports),
                lambda: crafted_replies(18081),
            ],
        )
    record(f"allowed client {ALLOWED_CLIENT}: {allowed}")
    record(f"denied client: {denied}")
    assert allowed == {
        "22": "open",
        "80": "open",
        "443": "open",
        "18080": "timeout",
        "18081": "timeout",
        "9100": "refused",
    }
    assert denied == {
        "22": "timeout",
        "80": "open",
        "443": "open",
        "18080": "timeout",
        "18081": "timeout",
        "9100": "timeout",
    }
    assert replies == 0


def wait_until(check, seconds=30):
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(1)


def test_outside_view_of_the_host():
    assert_outside_view()


def test_ssh_answers_the_allowed_client_with_a_banner():
    banner = client("firewall-client-allowed").check_output(
        "python3 -c %s",
        f"import socket; print(socket.create_connection(('{HOST_ADDRESS}', 22), timeout=3).recv(64).decode())",
    )
    assert banner.startswith("SSH-2.0-")


def test_nginx_answers_http_and_https_from_outside():
    outside = client("firewall-client-denied")
    http = outside.check_output("curl -sS -o /dev/null -w '%%{http_code}' --max-time 5 http://%s/", HOST_ADDRESS)
    https = outside.check_output(
        "curl -sS -k -o /dev/null -w '%%{http_code}' --max-time 5 --resolve fw.test:443:%s https://fw.test/",
        HOST_ADDRESS,
    )
    assert http == "404"
    # fw_frontend is a placeholder upstream: nginx itself answers 503 over TLS.
    assert https == "503"


def test_published_ports_still_answer_on_the_host_itself(host):
    for port in ("18080", "18081"):
        assert host.run("curl -fsS -o /dev/null --max-time 5 http://127.0.0.1:%s/", port).rc == 0


def test_containers_reach_the_outside_network_and_each_other(host):
    fetch = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).status)"
    outside = host.check_output("docker exec fw-public python3 -c %s %s", fetch, f"http://{ALLOWED_CLIENT}:8000/")
    neighbour = host.check_output("docker exec fw-public python3 -c %s %s", fetch, "http://fw-local:8000/")
    assert outside == "200"
    assert neighbour == "200"


def test_the_table_holds_after_docker_restarts(host):
    host.check_output("systemctl restart docker")
    wait_until(
        lambda: (
            host.run("docker exec fw-local true").rc == 0
            and host.run("curl -fsS -o /dev/null --max-time 2 http://127.0.0.1:18080/").rc == 0
        )
    )
    assert_outside_view()


def test_the_boot_unit_restores_the_table(host):
    host.check_output("nft delete table inet berth")
    try:
        assert probe("firewall-client-denied", 22) == {"22": "open"}
    finally:
        host.check_output("systemctl restart berth-firewall.service")
    assert host.service("berth-firewall.service").is_enabled
    assert_outside_view()


# Last: it spends the allowed client's SSH allowance (6 new connections a minute, burst 6).
def test_ssh_new_connections_are_rate_limited_per_source():
    results = [probe("firewall-client-allowed", 22)["22"] for attempt in range(10)]
    record(f"10 SSH connections in a row from the allowed client: {results}")
    assert results[0] == "open"
    assert "timeout" in results


def test_no_revert_is_pending_after_a_confirmed_apply(host):
    assert not host.service("berth-firewall-revert.timer").is_running
