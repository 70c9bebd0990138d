#!/usr/bin/python
# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: lb_upstream
short_description: Write a load balancer's nginx upstream of app hosts, drain some of them, reload gracefully
version_added: 0.2.0
description:
  - Writes C(<upstreams_dir>/<name>.conf) on an nginx load balancer (the berth.stack.nginx role's upstream
    directory, whose site proxies to the upstream O(name)) with one C(server) line per app host's front door,
    balanced with O(balance) and passive health checks (O(max_fails) within O(fail_timeout)).
  - The servers named in O(down) stay listed but are marked C(down). New requests no longer reach them, while
    requests in flight there finish. That is how a fleet deploy drains a host before its rollout.
  - A change is written aside and renamed into place (nginx never reads half a file), checked with
    O(test_command) and applied with O(reload_command), a graceful reload. When the test or the reload fails,
    the previous file comes back (and nginx is reloaded onto it) before the module fails.
  - After the reload it waits until nginx has replaced its workers (each worker from before the reload has
    exited or is shutting down, and a new one runs), at most O(reload_timeout) seconds, because until then an
    old worker still takes new connections and sends them where the previous file said. The module fails
    when the time runs out.
  - After a change with servers down and O(drain_timeout) above 0, it waits until this host holds no
    established TCP connection to a down server (C(ss)), at most O(drain_timeout) seconds (the old nginx
    workers keep connections only while they finish requests).
  - Nothing changes when the file already has the wanted content (no test, no reload, no wait).
author:
  - berth.stack maintainers (@berth-stack)
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details:
      - Check mode renders the file and compares it with the one on the host; it tests, reloads and waits for nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
  idempotent:
    description: When run twice in a row with the same arguments, the second invocation indicates no change.
    support: full
options:
  name:
    description: Name of the nginx upstream group, and of its file C(<name>.conf).
    type: str
    required: true
  upstreams_dir:
    description: The directory whose C(*.conf) files nginx includes in its http context.
    type: path
    default: /etc/nginx/berth/upstreams
  servers:
    description: The app hosts' front doors, in this order in the file.
    type: list
    elements: dict
    required: true
    suboptions:
      address:
        description: IP address or host name of the front door (a name is resolved by nginx when it loads the file).
        type: str
        required: true
      port:
        description: Port of the front door (the app host's own nginx).
        type: int
        default: 80
  down:
    description: The servers (C(address:port), as in RV(servers_down)) to mark C(down), that is to drain.
    type: list
    elements: str
    default: []
  balance:
    description: How nginx spreads requests over the servers that are up.
    type: str
    choices: [least_conn, round_robin, ip_hash, random]
    default: least_conn
  max_fails:
    description: Failed attempts within O(fail_timeout) after which nginx skips a server for O(fail_timeout); 0 turns
      these passive checks off.
    type: int
    default: 3
  fail_timeout:
    description: An nginx time (C(10s), C(500ms)).
    type: str
    default: 10s
  keepalive:
    description: Idle keep-alive connections to the servers each worker keeps; 0 leaves keep-alive off.
    type: int
    default: 16
  test_command:
    description: Checks the whole configuration with the new file in place.
    type: list
    elements: str
    default: [nginx, -t, -q]
  reload_command:
    description: Reloads nginx gracefully (new workers take the new file; old ones finish their requests).
    type: list
    elements: str
    default: [systemctl, reload, nginx]
  drain_timeout:
    description: Seconds to wait, after a change that leaves servers down, until no connection to them is left;
      when they run out the module warns and returns (the connections left are in RV(drain)). 0 does not wait.
    type: float
    default: 0
  pid_file:
    description: The nginx master's pid file, to tell its workers from before and after the reload.
    type: path
    default: /run/nginx.pid
  reload_timeout:
    description: Seconds to wait after the reload until nginx has replaced its workers.
    type: float
    default: 30
notes:
  - The upstream file of O(name) must be one that nginx includes, and a site must proxy to O(name); the
    berth.stack.nginx role writes a placeholder for every upstream its sites name, and leaves an existing file alone.
seealso:
  - module: berth.stack.compose_rollout
"""

EXAMPLES = r"""
- name: Drain app2 at the load balancer
  berth.stack.lb_upstream:
    name: shop_fleet
    servers:
      - address: 10.0.0.11
      - address: 10.0.0.12
    down: [10.0.0.12:80]
    drain_timeout: 30

- name: Put every app host back
  berth.stack.lb_upstream:
    name: shop_fleet
    servers:
      - address: 10.0.0.11
      - address: 10.0.0.12
"""

RETURN = r"""
path:
  description: The upstream file.
  returned: always
  type: str
  sample: /etc/nginx/berth/upstreams/shop_fleet.conf
servers_down:
  description: The servers marked C(down) in the file now (in check mode, the ones that would be).
  returned: always
  type: list
  elements: str
  sample: [10.0.0.12:80]
reload:
  description: The wait after the reload until nginx had replaced its workers.
  returned: when the module changed the file
  type: dict
  contains:
    seconds:
      description: How long it waited.
      type: float
  sample: {seconds: 0.15}
drain:
  description: The wait after the reload for the connections to the down servers to end.
  returned: when the module waited (a change, servers down, O(drain_timeout) above 0)
  type: dict
  contains:
    seconds:
      description: How long it waited.
      type: float
    connections:
      description: Established connections to the down servers left at the end (0 unless it timed out).
      type: int
  sample: {seconds: 0.6, connections: 0}
commands:
  description: The commands run (test, reload, C(ss)), in order.
  returned: always
  type: list
  elements: list
  sample: [[nginx, -t, -q], [systemctl, reload, nginx]]
"""

import os
import socket
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.berth.stack.plugins.module_utils import _nginx_upstream as upstreams

DRAIN_POLL_SECONDS = 0.25
RELOAD_POLL_SECONDS = 0.05


def connections_to(run, servers):
    """Established TCP connections from this host to ``servers`` (``address:port``), counted with ``ss``."""
    total = 0
    for key in servers:
        address, port = key.rsplit(":", 1)
        for family, _type, _proto, _name, sockaddr in socket.getaddrinfo(address, int(port), type=socket.SOCK_STREAM):
            target = f"[{sockaddr[0]}]:{port}" if family == socket.AF_INET6 else f"{sockaddr[0]}:{port}"
            rc, out, err = run(["ss", "-Htn", "state", "established", "dst", target])
            if rc != 0:
                raise OSError(f"ss failed: {(err or out).strip()}")
            total += len([line for line in out.splitlines() if line.strip()])
    return total


def wait_drained(count, timeout, clock=time.monotonic, sleep=time.sleep):
    """Ask ``count()`` until it answers 0 or ``timeout`` seconds passed: {seconds, connections}."""
    started = clock()
    while True:
        left = count()
        if left == 0 or clock() - started >= timeout:
            return {"seconds": round(clock() - started, 2), "connections": left}
        sleep(DRAIN_POLL_SECONDS)


def master_pid(pid_file):
    """The nginx master's pid from ``pid_file``, or None when it cannot be read."""
    try:
        with open(pid_file, encoding="utf-8") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def wait_reloaded(workers, before, timeout, clock=time.monotonic, sleep=time.sleep):
    """Ask ``workers()`` until the reload took effect (upstreams.reload_applied) or ``timeout`` passed:
    the seconds it took, or None at the timeout."""
    started = clock()
    while not upstreams.reload_applied(before, workers()):
        if clock() - started >= timeout:
            return None
        sleep(RELOAD_POLL_SECONDS)
    return round(clock() - started, 2)


def apply(module, path, before, content, run):
    """Rename the new file into place, test it, reload; the previous file comes back on any failure."""
    upstreams.write_atomically(path, content)
    for step, argv in (("test", module.params["test_command"]), ("reload", module.params["reload_command"])):
        rc, out, err = run(argv)
        if rc != 0:
            upstreams.restore(path, before)
            if step == "reload":
                run(module.params["reload_command"])
            why = (err or out).strip()
            module.fail_json(
                msg=f"{' '.join(argv)} failed with the new {path} ({why}); the previous file was put back",
                path=path,
                rc=rc,
            )


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "upstreams_dir": {"type": "path", "default": "/etc/nginx/berth/upstreams"},
            "servers": {
                "type": "list",
                "elements": "dict",
                "required": True,
                "options": {
                    "address": {"type": "str", "required": True},
                    "port": {"type": "int", "default": 80},
                },
            },
            "down": {"type": "list", "elements": "str", "default": []},
            "balance": {"type": "str", "choices": list(upstreams.BALANCE_METHODS), "default": "least_conn"},
            "max_fails": {"type": "int", "default": 3},
            "fail_timeout": {"type": "str", "default": "10s"},
            "keepalive": {"type": "int", "default": 16},
            "test_command": {"type": "list", "elements": "str", "default": ["nginx", "-t", "-q"]},
            "reload_command": {"type": "list", "elements": "str", "default": ["systemctl", "reload", "nginx"]},
            "drain_timeout": {"type": "float", "default": 0},
            "pid_file": {"type": "path", "default": "/run/nginx.pid"},
            "reload_timeout": {"type": "float", "default": 30},
        },
        supports_check_mode=True,
    )
    params = module.params
    errors = upstreams.balanced_upstream_errors(params)
    if errors:
        module.fail_json(msg="; ".join(errors))
    path = upstreams.upstream_path(params["upstreams_dir"], params["name"])
    if not os.path.isdir(params["upstreams_dir"]):
        module.fail_json(msg=f"upstreams_dir={params['upstreams_dir']}: no such directory (the nginx role creates it)")
    commands = []

    def run(argv):
        commands.append(list(argv))
        return module.run_command(argv)

    before = upstreams.read_file(path)
    content = upstreams.render_balanced_upstream(
        params, "berth.stack.lb_upstream: the app hosts behind this load balancer; servers marked down are drained."
    )
    result = {
        "changed": before != content,
        "path": path,
        "servers_down": upstreams.down_servers(content),
        "commands": commands,
    }
    if module._diff:
        result["diff"] = {"before": before or "", "after": content, "before_header": path, "after_header": path}
    if not result["changed"] or module.check_mode:
        module.exit_json(**result)
    master = master_pid(params["pid_file"])
    if master is None:
        module.fail_json(msg=f"pid_file={params['pid_file']}: no nginx master pid to read; is nginx running?", **result)
    workers_before = upstreams.nginx_workers(master)
    apply(module, path, before, content, run)
    # `systemctl reload` returns when the signal is sent; until the master has replaced its workers, the old
    # ones take new connections with the previous file (and still send requests to a server now down).
    result["reload"] = {
        "seconds": wait_reloaded(lambda: upstreams.nginx_workers(master), workers_before, params["reload_timeout"])
    }
    if result["reload"]["seconds"] is None:
        module.fail_json(
            msg=f"nginx (master {master}) still had workers from before the reload of {path} after "
            f"reload_timeout={params['reload_timeout']}s: the new file may not be in effect",
            **result,
        )
    if result["servers_down"] and params["drain_timeout"] > 0:
        result["drain"] = wait_drained(lambda: connections_to(run, result["servers_down"]), params["drain_timeout"])
        if result["drain"]["connections"]:
            module.warn(
                f"{result['drain']['connections']} connection(s) to {', '.join(result['servers_down'])} still open "
                f"after drain_timeout={params['drain_timeout']}"
            )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
