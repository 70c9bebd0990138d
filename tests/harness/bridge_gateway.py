"""Print the outer engine's default-bridge gateway: this machine's address on that bridge, the one the
test hosts see the controller's connections come from.

`docker network inspect bridge` names it under IPAM.Config[].Gateway on most engines; an engine that
took over an existing docker0 lists only the subnet there, and the address is then the bridge
interface's own. Standard library only; used by the fleet scenario (its group_vars and its tests).
"""

import json
import subprocess
import sys


def bridge_gateway() -> str:
    network = json.loads(subprocess.check_output(["docker", "network", "inspect", "bridge"]))[0]
    for config in network["IPAM"]["Config"] or []:
        if config.get("Gateway"):
            return config["Gateway"]
    interface = (network.get("Options") or {}).get("com.docker.network.bridge.name", "docker0")
    shown = json.loads(subprocess.check_output(["ip", "-json", "-4", "address", "show", "dev", interface]))
    addresses = [entry["local"] for link in shown for entry in link.get("addr_info", [])]
    if not addresses:
        raise SystemExit(f"bridge_gateway.py: the bridge network has no gateway and {interface} no IPv4 address")
    return addresses[0]


if __name__ == "__main__":
    sys.stdout.write(bridge_gateway() + "\n")
