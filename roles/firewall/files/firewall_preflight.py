"""Checks the firewall role's variables that an argument spec cannot: addresses, ports, names.

Reads the variables as one JSON object (argv[1]) and prints one line per problem,
`variable=value: why`, so the role can fail once, naming every bad value, before any change.
"""

import ipaddress
import json
import re
import sys

INTERFACE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}\*?$")
NAME = re.compile(r"^[^\n\"\\]{1,128}$")


def network_problem(value):
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as error:
        return str(error)
    return None


def port_problem(value):
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        return "a port is a whole number from 1 to 65535"
    return None


def problems(variables):
    found = []

    def check(name, value, why):
        if why:
            found.append(f"{name}={value}: {why}")

    for variable in ("firewall_ssh_allow", "firewall_web_allow"):
        for index, value in enumerate(variables[variable]):
            check(f"{variable}[{index}]", value, network_problem(str(value)))
    for variable in ("firewall_ssh_port", "firewall_confirm_port"):
        check(variable, variables[variable], port_problem(variables[variable]))
    for index, value in enumerate(variables["firewall_web_ports"]):
        check(f"firewall_web_ports[{index}]", value, port_problem(value))
    for variable in ("firewall_input_rules", "firewall_forward_allow"):
        for index, rule in enumerate(variables[variable]):
            prefix = f"{variable}[{index}]"
            check(
                f"{prefix}.name", rule["name"], None if NAME.match(rule["name"]) else "no quote, backslash or newline"
            )
            ports = rule["ports"] if "ports" in rule else [rule["port"]]
            if not ports:
                found.append(f"{prefix}.ports=[]: name at least one port")
            for port in ports:
                check(f"{prefix}.port{'s' if 'ports' in rule else ''}", port, port_problem(port))
            for position, value in enumerate(rule.get("sources") or []):
                check(f"{prefix}.sources[{position}]", value, network_problem(str(value)))
    for index, value in enumerate(variables["firewall_container_interfaces"]):
        why = (
            None if INTERFACE.match(value) else "an interface name of up to 15 characters, with an optional trailing *"
        )
        check(f"firewall_container_interfaces[{index}]", value, why)
    for variable, low in (("firewall_revert_timeout", 5), ("firewall_confirm_timeout", 1)):
        value = variables[variable]
        check(variable, value, None if low <= value <= 3600 else f"seconds from {low} to 3600")
    if variables["firewall_confirm_timeout"] >= variables["firewall_revert_timeout"]:
        found.append(
            f"firewall_confirm_timeout={variables['firewall_confirm_timeout']}: must be shorter than "
            f"firewall_revert_timeout={variables['firewall_revert_timeout']}, "
            "or a late confirmation finds the change reverted"
        )
    return found


if __name__ == "__main__":
    print("\n".join(problems(json.loads(sys.argv[1]))))
