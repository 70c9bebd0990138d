"""Connections from an outside client to the firewalled host, printed as JSON.

    probe.py tcp HOST PORT...     each port: "open" (a banner or HTTP status when the server sends one
                                  first or answers GET), "refused" (RST) or "timeout" (dropped)
    probe.py crafted HOST PORT    SYNs to 127.0.0.1:PORT sent at HOST's MAC address with nping;
                                  prints the number of replies received

Every attempt is bounded: 3 s per TCP connection (the ports are tried at the same time), 2 packets
300 ms apart for nping.
"""

import json
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

TIMEOUT = 3.0


def tcp(host, port):
    try:
        connection = socket.create_connection((host, port), timeout=TIMEOUT)
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    with connection:
        return "open"


def mac_of(host):
    """The host's MAC address on the segment, from the ARP cache after a datagram to it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"", (host, 9))
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        time.sleep(0.1)
        with open("/proc/net/arp") as table:
            for line in table.read().splitlines()[1:]:
                fields = line.split()
                if fields[0] == host and fields[3] != "00:00:00:00:00:00":
                    return fields[3], fields[5]
    raise SystemExit(f"no ARP entry for {host}")


def crafted(host, port):
    mac, interface = mac_of(host)
    command = ["nping", "--tcp", "--flags", "syn", "-p", str(port), "-c", "2", "--delay", "300ms"]
    command += ["--send-eth", "-e", interface, "--dest-mac", mac, "127.0.0.1"]
    output = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout
    received = re.search(r"Rcvd: (\d+)", output)
    return {"mac": mac, "interface": interface, "port": port, "received": int(received.group(1)) if received else None}


if __name__ == "__main__":
    mode, target, *ports = sys.argv[1:]
    if mode == "tcp":
        with ThreadPoolExecutor(len(ports)) as pool:
            print(json.dumps(dict(pool.map(lambda port: (port, tcp(target, int(port))), ports))))
    else:
        print(json.dumps(crafted(target, int(ports[0]))))
