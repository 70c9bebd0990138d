"""tests/harness/bridge_gateway.py against this machine's real engine: the fleet scenario's controller
address is an address this machine has, inside the default bridge's subnet, whether or not the engine
lists a gateway."""

import ipaddress
import json
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_the_gateway_is_this_machines_address_on_the_default_bridge():
    printed = subprocess.check_output(["python3", str(REPO / "tests" / "harness" / "bridge_gateway.py")], text=True)
    gateway = ipaddress.ip_address(printed.strip())
    network = json.loads(subprocess.check_output(["docker", "network", "inspect", "bridge"]))[0]
    subnets = [ipaddress.ip_network(config["Subnet"]) for config in network["IPAM"]["Config"]]
    assert any(gateway in subnet for subnet in subnets), (gateway, subnets)
    shown = json.loads(subprocess.check_output(["ip", "-json", "-4", "address", "show"]))
    own = {entry["local"] for link in shown for entry in link.get("addr_info", [])}
    assert str(gateway) in own
