#!/usr/bin/python
# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: compose_rollout
short_description: Health-gated blue/green rollout of a Compose release behind nginx upstream files
version_added: 0.1.0
description:
  - Rolls one release of an app out on one host, as steps 5 to 9 of a berth.stack deploy.
  - Starts the idle color (Compose project C(<app>-blue) or C(<app>-green)) with the release's compose file,
    service by service in the given order; each service must pass its gates before the next one starts.
  - "Gates: every container with a Docker HEALTHCHECK must become C(healthy); every HTTP probe against the
    new color's own published ports must answer the expected status, and make a JMESPath expression on the
    JSON body true, a number of times in a row within a timeout."
  - When a gate fails the new color is stopped, traffic is untouched, and the module fails naming the gate,
    the service, the last probe result, the container's health log and its last log lines.
  - When every gate passes, the app's nginx upstream files are switched to the new color (atomic rename,
    C(nginx -t), a check with C(nginx -T) that nginx reads the written files, graceful reload; the previous
    files are restored when nginx refuses them or does not read them), the probes run again through nginx,
    and a failure there switches traffic back and fails. When the reload that switches back fails, the new
    color keeps running and is recorded, because nginx still routes to it. An app with no service behind
    nginx (no O(services[].upstream), workers only) leaves nginx untouched, with no test, no reload and no
    probes through nginx.
  - As soon as the probes through nginx pass, the release is recorded in C(<state_dir>/state.json) with its
    image IDs and digests; then, after a drain period, the old color is stopped (kept, so a rollback starts
    it again in seconds).
  - The live color is the one the upstream files point at when they all point at one color; C(state.json)
    decides only when they do not (first deploy, placeholder). So a rollout interrupted after its switch
    never makes the next one start in the live color.
  - The same release id is rolled out again when its compose file or an env file it reads (C(env_file))
    changed, so a changed secret reaches the containers.
  - "The compose file receives each service's host port(s) for the color being started in the environment
    variable C(BERTH_PORT_<SERVICE>) (service name upper-cased, other characters as C(_)), for example
    C(ports: [\"127.0.0.1:${BERTH_PORT_BACKEND}:8000\"]), and the color in C(BERTH_COLOR)."
  - A rollback is the same call with an earlier release's O(release) and O(release_dir).
author:
  - berth.stack maintainers (@berth-stack)
requirements:
  - docker CLI with the Compose v2 plugin on the target
  - nginx on the target, including the upstream files from O(upstreams_dir)
  - jmespath on the target (Debian package C(python3-jmespath)) when a probe has O(services[].probes[].expect)
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Returns the plan (colors, upstream changes) and changes nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: Shows the upstream files before and after the switch.
  idempotent:
    description:
      - When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
    support: full
    details: The release that already serves, healthy, with upstream files pointing at it, is C(changed=false).
options:
  app:
    description:
      - Name of the app. Compose projects are C(<app>-data) (not touched here), C(<app>-blue) and C(<app>-green).
      - Lower-case letters, digits and C(_), starting with a letter (it prefixes upstream names).
    type: str
    required: true
  release:
    description: Identifier of the release being rolled out, as recorded in the state file.
    type: str
    required: true
  release_dir:
    description: Directory of the release, holding its compose file (and the C(.env) compose reads from it).
    type: path
    required: true
  compose_file:
    description: Name of the compose file inside O(release_dir).
    type: str
    default: compose.yaml
  state_dir:
    description: Directory of the app's C(state.json). Defaults to C(/srv/berth/<app>).
    type: path
  services:
    description:
      - The release's app services, in the order they start; each one's gates pass before the next starts.
      - Services of the compose file not listed here start last and are gated on their HEALTHCHECK only,
        within the default O(services[].health_timeout).
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Compose service name.
        type: str
        required: true
      ports:
        description:
          - Host port (on 127.0.0.1) of the service's first replica in each color; replica N uses port + N - 1.
          - Required for services with an O(services[].upstream) or O(services[].probes).
        type: dict
        suboptions:
          blue:
            description: First host port in the blue color.
            type: int
            required: true
          green:
            description: First host port in the green color.
            type: int
            required: true
      replicas:
        description: Number of containers of the service; the compose file should use C(deploy.replicas).
        type: int
        default: 1
      upstream:
        description:
          - nginx upstream that serves this service, written to C(<upstreams_dir>/<upstream>.conf).
          - By convention C(<app>_<service>).
        type: str
      health_timeout:
        description: Seconds to wait for the service's containers to be running and C(healthy).
        type: float
        default: 120
      probes:
        description: HTTP probes against every replica of the new color, then through nginx after the switch.
        type: list
        elements: dict
        default: []
        suboptions:
          path:
            description: Request path, starting with C(/).
            type: str
            required: true
          method:
            description: HTTP method.
            type: str
            default: GET
          status:
            description: Expected HTTP status.
            type: int
            default: 200
          expect:
            description:
              - JMESPath expression that must be true on the JSON body,
                for example C(status == 'ok' && database == 'connected').
            type: str
          successes:
            description: Consecutive successful answers needed.
            type: int
            default: 3
          interval:
            description: Seconds between two requests.
            type: float
            default: 1
          timeout:
            description: Seconds after which the probe gives up.
            type: float
            default: 60
          request_timeout:
            description: Seconds one request may take.
            type: float
            default: 5
          nginx_path:
            description:
              - Path of the same check through nginx, when the site maps it elsewhere.
              - Defaults to O(services[].probes[].path).
            type: str
          headers:
            description: Extra request headers.
            type: dict
            default: {}
  upstreams_dir:
    description: Directory of the upstream files, owned by the nginx role and included by nginx.
    type: path
    default: /etc/nginx/berth/upstreams
  upstream_keepalive:
    description: Idle keepalive connections per nginx worker to each upstream.
    type: int
    default: 16
  nginx_url:
    description:
      - Base URL of nginx for the probes after the switch, for example C(http://127.0.0.1) or C(https://127.0.0.1).
      - An empty string skips the probes through nginx.
    type: str
    default: http://127.0.0.1
  nginx_host_header:
    description: C(Host) header for the probes through nginx, to reach the app's site.
    type: str
  nginx_test_command:
    description:
      - Command that checks the complete nginx configuration.
      - When it contains C(-t), the module also runs it with C(-T) in its place and fails unless nginx
        reads every written upstream file (an O(upstreams_dir) nginx does not include is caught before
        the reload).
    type: list
    elements: str
    default: [nginx, -t, -q]
  nginx_reload_command:
    description: Command that reloads nginx gracefully.
    type: list
    elements: str
    default: [systemctl, reload, nginx]
  drain_seconds:
    description: Seconds the old color keeps running after the switch, so requests in flight finish.
    type: float
    default: 5
  stop_timeout:
    description: Seconds Docker gives a container to stop before killing it.
    type: int
    default: 10
  keep_releases:
    description: Releases kept in the state file's history (at least 2, so the idle color stays recorded).
    type: int
    default: 5
notes:
  - The old color is stopped, not removed. The idle color's containers are replaced by the next rollout.
  - The deploy lock, pulling images, migrations and pruning release directories belong to the
    P(berth.stack.compose_app#role) role, which calls this module.
seealso:
  - module: community.docker.docker_compose_v2
  - module: berth.stack.safe_migration
"""

EXAMPLES = r"""
- name: Roll release 2025-01-15.1 of the demo app out
  berth.stack.compose_rollout:
    app: demo
    release: "2025-01-15.1"
    release_dir: /srv/berth/demo/releases/2025-01-15.1
    services:
      - name: backend
        ports: {blue: 18210, green: 18220}
        upstream: demo_backend
        probes:
          - path: /api/health
            expect: "status == 'ok' && database == 'connected'"
            successes: 3
      - name: worker
      - name: frontend
        ports: {blue: 18211, green: 18221}
        upstream: demo_frontend
        probes:
          - path: /healthz
            nginx_path: /
    nginx_host_header: demo.example.com
  register: rollout

- name: Show which color serves now and how long each step took
  ansible.builtin.debug:
    msg: "{{ rollout.color }} serves {{ rollout.release }}; {{ rollout.timings }}"
"""

RETURN = r"""
release:
  description: The release rolled out (or already serving).
  returned: always
  type: str
  sample: "2025-01-15.1"
color:
  description: The color that serves the release after the module, or would in check mode.
  returned: always
  type: str
  sample: green
previous:
  description: Color and release that served before, if any.
  returned: always
  type: dict
  sample: {"color": "blue", "release": "2025-01-14.3"}
plan:
  description: What the rollout does (or did), step by step, including every upstream file change.
  returned: always
  type: dict
  sample:
    color: green
    project: demo-green
    order: [backend, worker, frontend]
    upstreams:
      - {name: demo_backend, path: /etc/nginx/berth/upstreams/demo_backend.conf, ports: [18220], changed: true}
    steps:
      - "start and gate demo-green: backend, worker, frontend"
      - "switch upstreams to green: demo_backend, demo_frontend (nginx -t, nginx -T, reload)"
      - "probe through nginx at http://127.0.0.1"
      - "record 2025-01-15.1 as active in /srv/berth/demo/state.json"
      - "drain 5 s, then stop demo-blue"
  contains:
    steps:
      description: The steps the rollout takes, in order; empty when the release already serves.
      type: list
      elements: str
gates:
  description: The result of every gate, in the order they ran.
  returned: always
  type: list
  elements: dict
  sample:
    - {gate: health, service: backend, passed: true, seconds: 4.1}
    - {gate: http, service: backend, url: "http://127.0.0.1:18220/api/health", passed: true, attempts: 3}
failed_gate:
  description:
    - On a failed gate, the gate (C(health), C(http) or C(nginx)), the service and color, and for HTTP gates
      the URL, the expectation and the last probe result. The health log and last log lines are in RV(ignore:msg).
  returned: when a gate failed
  type: dict
  sample:
    gate: http
    service: backend
    color: blue
    url: "http://127.0.0.1:18210/api/health"
    method: GET
    status: 200
    expect: "status == 'ok' && database == 'connected'"
    successes: 3
    passed: false
    attempts: 61
    last: {ok: false, url: "http://127.0.0.1:18210/api/health", status: 200,
           body: '{"status": "ok", "database": "disconnected", "version": "v3"}',
           reason: "expression \"status == 'ok' && database == 'connected'\" is false on the body"}
images:
  description: Image reference, image ID and repository digests of every service of the release.
  returned: success
  type: dict
  sample: {"backend": {"image": "registry.example.com/demo/backend:v2", "image_id": "sha256:...", "repo_digests": []}}
pruned_releases:
  description: History entries dropped beyond O(keep_releases), for the caller to remove their directories and images.
  returned: success
  type: list
  elements: dict
history:
  description: The releases kept in the state file after this rollout, newest (active) first.
  returned: success
  type: list
  elements: dict
commands:
  description: The commands run, in order.
  returned: always
  type: list
  elements: str
timings:
  description: Seconds per step (start_and_gate, switch, nginx_probe, record, drain, stop_old, total).
  returned: always
  type: dict
  sample: {"start_and_gate": 6.2, "switch": 0.1, "nginx_probe": 2.0, "record": 0.01, "drain": 5.0, "stop_old": 0.6,
           "total": 14.0}
"""

import contextlib
import datetime
import hashlib
import os
import re
import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.berth.stack.plugins.module_utils import _docker_cli as docker
from ansible_collections.berth.stack.plugins.module_utils import _health as health
from ansible_collections.berth.stack.plugins.module_utils import _nginx_upstream as upstreams
from ansible_collections.berth.stack.plugins.module_utils import _release_state as states

APP_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
RELEASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
HEALTH_POLL_SECONDS = 0.5

PROBE_SPEC = {
    "path": {"type": "str", "required": True},
    "method": {"type": "str", "default": "GET"},
    "status": {"type": "int", "default": 200},
    "expect": {"type": "str"},
    "successes": {"type": "int", "default": 3},
    "interval": {"type": "float", "default": 1},
    "timeout": {"type": "float", "default": 60},
    "request_timeout": {"type": "float", "default": 5},
    "nginx_path": {"type": "str"},
    "headers": {"type": "dict", "default": {}},
}

SERVICE_SPEC = {
    "name": {"type": "str", "required": True},
    "ports": {
        "type": "dict",
        "options": {"blue": {"type": "int", "required": True}, "green": {"type": "int", "required": True}},
    },
    "replicas": {"type": "int", "default": 1},
    "upstream": {"type": "str"},
    "health_timeout": {"type": "float", "default": 120},
    "probes": {"type": "list", "elements": "dict", "default": [], "options": PROBE_SPEC},
}

ARGUMENT_SPEC = {
    "app": {"type": "str", "required": True},
    "release": {"type": "str", "required": True},
    "release_dir": {"type": "path", "required": True},
    "compose_file": {"type": "str", "default": "compose.yaml"},
    "state_dir": {"type": "path"},
    "services": {"type": "list", "elements": "dict", "required": True, "options": SERVICE_SPEC},
    "upstreams_dir": {"type": "path", "default": "/etc/nginx/berth/upstreams"},
    "upstream_keepalive": {"type": "int", "default": 16},
    "nginx_url": {"type": "str", "default": "http://127.0.0.1"},
    "nginx_host_header": {"type": "str"},
    "nginx_test_command": {"type": "list", "elements": "str", "default": ["nginx", "-t", "-q"]},
    "nginx_reload_command": {"type": "list", "elements": "str", "default": ["systemctl", "reload", "nginx"]},
    "drain_seconds": {"type": "float", "default": 5},
    "stop_timeout": {"type": "int", "default": 10},
    "keep_releases": {"type": "int", "default": 5},
}


class RolloutFailed(Exception):
    """A step failed after the rollout started; ``details`` goes into the module's result."""

    def __init__(self, message, **details):
        super().__init__(message)
        self.details = details


def validation_errors(params):
    """Every problem with the parameters, each naming the option and the bad value."""
    errors = []
    if not APP_NAME.match(params["app"]):
        errors.append(f"app={params['app']!r}: use lower-case letters, digits and _, starting with a letter")
    if not RELEASE_NAME.match(params["release"]):
        errors.append(f"release={params['release']!r}: use letters, digits, '.', '_' and '-'")
    if params["keep_releases"] < 2:
        errors.append(f"keep_releases={params['keep_releases']}: keep at least 2 (the active and the idle color)")
    if not os.path.isfile(os.path.join(params["release_dir"], params["compose_file"])):
        errors.append(f"release_dir={params['release_dir']!r}: holds no compose file {params['compose_file']!r}")
    if params["nginx_url"] and not re.match(r"^https?://[^/]+$", params["nginx_url"]):
        errors.append(f"nginx_url={params['nginx_url']!r}: give scheme and host only, e.g. http://127.0.0.1")
    seen_names, seen_ports, seen_upstreams = set(), set(), set()
    for index, service in enumerate(params["services"]):
        where = f"services[{index}]"
        if service["name"] in seen_names:
            errors.append(f"{where}.name={service['name']!r}: listed twice")
        seen_names.add(service["name"])
        if service["replicas"] < 1:
            errors.append(f"{where}.replicas={service['replicas']}: must be at least 1")
        if (service["upstream"] or service["probes"]) and not service["ports"]:
            errors.append(f"{where}.ports: required for service {service['name']!r}, which has an upstream or probes")
        for color, first in (service["ports"] or {}).items():
            ports = range(first, first + service["replicas"])
            if first < 1 or ports[-1] > 65535:
                errors.append(f"{where}.ports.{color}={first}: out of range 1-65535")
            if seen_ports & set(ports):
                errors.append(f"{where}.ports.{color}={first}: overlaps another service's or color's ports")
            seen_ports.update(ports)
        if service["upstream"] is not None:
            if not upstreams.UPSTREAM_NAME.match(service["upstream"]):
                errors.append(f"{where}.upstream={service['upstream']!r}: must match {upstreams.UPSTREAM_NAME.pattern}")
            if service["upstream"] in seen_upstreams:
                errors.append(f"{where}.upstream={service['upstream']!r}: used by two services")
            seen_upstreams.add(service["upstream"])
        for number, probe in enumerate(service["probes"]):
            if not probe["path"].startswith("/"):
                errors.append(f"{where}.probes[{number}].path={probe['path']!r}: must start with /")
            if probe["successes"] < 1:
                errors.append(f"{where}.probes[{number}].successes={probe['successes']}: must be at least 1")
            if probe["expect"] is not None and health.HAS_JMESPATH:
                try:
                    health.compile_expression(probe["expect"])
                except ValueError as exc:
                    errors.append(f"{where}.probes[{number}].expect: {exc}")
    return errors


def service_ports(service, color):
    if not service["ports"]:
        return []
    first = service["ports"][color]
    return list(range(first, first + service["replicas"]))


def compose_environment(params, color):
    env = {"BERTH_COLOR": color}
    for service in params["services"]:
        ports = service_ports(service, color)
        if ports:
            env[docker.port_variable(service["name"])] = str(ports[0]) if len(ports) == 1 else f"{ports[0]}-{ports[-1]}"
    return env


def desired_upstreams(params, color):
    """(name, path, content, ports) of every upstream file, pointing at ``color``."""
    comment = f"Managed by berth.stack.compose_rollout: app {params['app']}, color {color}, release {params['release']}"
    result = []
    for service in params["services"]:
        if service["upstream"]:
            ports = service_ports(service, color)
            content = upstreams.render_upstream(service["upstream"], ports, params["upstream_keepalive"], comment)
            result.append(
                (
                    service["upstream"],
                    upstreams.upstream_path(params["upstreams_dir"], service["upstream"]),
                    content,
                    ports,
                )
            )
    return result


def color_is_serving(run, params, color):
    """True when every container of the color runs (and is healthy where it has a HEALTHCHECK)."""
    documents = docker.containers(run, f"{params['app']}-{color}")
    if not documents:
        return False
    for document in documents:
        status, health_status = docker.container_state(document)
        if status != "running" or health_status not in (None, "healthy"):
            return False
    return {service["name"] for service in params["services"]} <= {
        doc["Config"]["Labels"].get(docker.COMPOSE_LABEL_SERVICE) for doc in documents
    }


def wait_healthy(run, project, service, timeout):
    """Wait until the service's containers run and are healthy; return (passed, documents, reason)."""
    deadline = time.monotonic() + timeout
    while True:
        documents = docker.containers(run, project, service)
        states = [docker.container_state(doc) for doc in documents]
        if not documents:
            reason = "no container was created"
        elif any(status in ("exited", "dead") for status, _health in states):
            return False, documents, "a container stopped: " + ", ".join(status for status, _health in states)
        elif any(health_status == "unhealthy" for _status, health_status in states):
            return False, documents, "Docker reports the HEALTHCHECK unhealthy"
        elif all(status == "running" and health_status in (None, "healthy") for status, health_status in states):
            return True, documents, None
        else:
            reason = "still " + ", ".join(
                f"{status}/{health_status or 'no healthcheck'}" for status, health_status in states
            )
        if time.monotonic() >= deadline:
            return False, documents, f"not healthy within {timeout:g} s ({reason})"
        time.sleep(HEALTH_POLL_SECONDS)


def run_probe(probe, url, host_header=None):
    headers = dict(probe["headers"])
    if host_header:
        headers["Host"] = host_header

    def once():
        return health.probe(url, probe["method"], probe["status"], probe["expect"], headers, probe["request_timeout"])

    passed, attempts, last = health.probe_until(once, probe["successes"], probe["interval"], probe["timeout"])
    return {"passed": passed, "attempts": attempts, "last": last, "url": url}


def diagnostics(run, documents):
    """Health log and last log lines of each container, for the failure message."""
    return [
        {
            "container": doc["Name"].lstrip("/"),
            "state": "/".join(filter(None, docker.container_state(doc))),
            "health_log": docker.health_log(doc),
            "log_tail": docker.container_logs(run, doc["Id"]),
        }
        for doc in documents
    ]


def gate_failure_message(gate, containers):
    service, color = gate["service"], gate["color"]
    if gate["gate"] == "health":
        what = f"health gate failed for service {service!r} on color {color}: {gate['reason']}"
    else:
        last = gate["last"]
        expectation = f"status {gate['status']}" + (f" and {gate['expect']!r}" if gate["expect"] else "")
        what = (
            f"{gate['gate']} gate failed for service {service!r} on color {color}: {gate['method']} {gate['url']} "
            f"expected {expectation} {gate['successes']} times in a row; last probe: {last['reason']} "
            f"(status {last['status']}, body {last['body']!r})"
        )
    parts = [what]
    for item in containers:
        health_lines = "; ".join(f"exit {e['exit_code']}: {e['output']}" for e in item["health_log"]) or "none"
        parts.append(f"{item['container']} ({item['state']}) health log: {health_lines}")
        parts.append(f"{item['container']} last log lines: " + " | ".join(item["log_tail"]))
    return ". ".join(parts)


def start_and_gate(run, params, color, order, env, gates):
    """Start the color service by service; raise RolloutFailed at the first gate that fails."""
    project = f"{params['app']}-{color}"
    compose_file = os.path.join(params["release_dir"], params["compose_file"])
    by_name = {service["name"]: service for service in params["services"]}
    for index, name in enumerate(order):
        started = time.monotonic()
        docker.compose_up(run, project, compose_file, [name], env, remove_orphans=index == len(order) - 1)
        unlisted = {key: SERVICE_SPEC[key]["default"] for key in ("health_timeout", "replicas", "probes")}
        service = by_name.get(name, {**unlisted, "ports": None})
        passed, documents, reason = wait_healthy(run, project, name, service["health_timeout"])
        gates.append(
            {"gate": "health", "service": name, "passed": passed, "seconds": round(time.monotonic() - started, 2)}
        )
        if not passed:
            gate = {"gate": "health", "service": name, "color": color, "reason": reason}
            raise RolloutFailed(gate_failure_message(gate, diagnostics(run, documents)), failed_gate=gate)
        for probe in service["probes"]:
            for port in service_ports(service, color):
                outcome = run_probe(probe, f"http://127.0.0.1:{port}{probe['path']}")
                gates.append(
                    {
                        "gate": "http",
                        "service": name,
                        "url": outcome["url"],
                        "passed": outcome["passed"],
                        "attempts": outcome["attempts"],
                    }
                )
                if not outcome["passed"]:
                    gate = {
                        "gate": "http",
                        "service": name,
                        "color": color,
                        **outcome,
                        **{k: probe[k] for k in ("method", "status", "expect", "successes")},
                    }
                    documents = docker.containers(run, project, name)
                    raise RolloutFailed(gate_failure_message(gate, diagnostics(run, documents)), failed_gate=gate)


def nginx_command(module, commands, argv):
    commands.append(" ".join(argv))
    rc, out, err = module.run_command(argv)
    return rc, (err or out).strip()


def dump_command(test_command):
    """The nginx test command with -T (test and dump) in place of -t, or None when it has no -t."""
    if "-t" not in test_command:
        return None
    return ["-T" if arg == "-t" else arg for arg in test_command]


def switch_upstreams(module, params, planned, commands):
    """Write the upstream files, check nginx reads and accepts them, reload; restore and raise when not."""
    previous = {}
    if not planned:
        # Nothing of this app is behind nginx (workers only): a reload would only close other
        # apps' idle keep-alive connections.
        return previous
    for _name, path, content, _ports in planned:
        previous[path] = upstreams.read_file(path)
        if previous[path] != content:
            upstreams.write_atomically(path, content)
    rc, message = nginx_command(module, commands, params["nginx_test_command"])
    if rc != 0:
        restore_upstreams(previous)
        raise RolloutFailed(f"nginx -t refused the new upstream files, previous files restored: {message}")
    dump = dump_command(params["nginx_test_command"])
    if dump:
        commands.append(" ".join(dump))
        rc, out, err = module.run_command(dump)
        read = {os.path.realpath(path) for path in upstreams.dumped_files(out)}
        unread = [path for path in previous if os.path.realpath(path) not in read]
        if rc != 0 or unread:
            restore_upstreams(previous)
            why = f"shows nginx does not read {', '.join(unread)}"
            if rc != 0:
                why = f"failed: {(err or out).strip()[-500:]}"
            raise RolloutFailed(
                f"`{' '.join(dump)}` {why}; upstreams_dir={params['upstreams_dir']!r} must be the directory "
                "nginx includes (the nginx role's upstreams directory); previous files restored, traffic untouched"
            )
    rc, message = nginx_command(module, commands, params["nginx_reload_command"])
    if rc != 0:
        restore_upstreams(previous)
        nginx_command(module, commands, params["nginx_reload_command"])
        raise RolloutFailed(f"nginx reload failed, previous upstream files restored: {message}")
    return previous


def restore_upstreams(previous):
    for path, content in previous.items():
        upstreams.restore(path, content)


def probe_through_nginx(params, color, gates):
    for service in params["services"]:
        if not service["upstream"]:
            continue
        for probe in service["probes"]:
            url = params["nginx_url"] + (probe["nginx_path"] or probe["path"])
            outcome = run_probe(probe, url, params["nginx_host_header"])
            gates.append(
                {
                    "gate": "nginx",
                    "service": service["name"],
                    "url": url,
                    "passed": outcome["passed"],
                    "attempts": outcome["attempts"],
                }
            )
            if not outcome["passed"]:
                gate = {
                    "gate": "nginx",
                    "service": service["name"],
                    "color": color,
                    **outcome,
                    **{k: probe[k] for k in ("method", "status", "expect", "successes")},
                }
                return gate
    return None


def release_images(run, project):
    images = {}
    for document in docker.containers(run, project):
        service = document["Config"]["Labels"].get(docker.COMPOSE_LABEL_SERVICE)
        images.setdefault(service, docker.image_record(run, document))
    return images


def live_color_from_upstreams(params):
    """The color all upstream files point at (by each service's first port), or None when they do not agree."""
    colors = set()
    for service in params["services"]:
        if not service["upstream"]:
            continue
        path = upstreams.upstream_path(params["upstreams_dir"], service["upstream"])
        ports = upstreams.upstream_ports(upstreams.read_file(path))
        matching = [color for color in states.COLORS if ports and ports[0] == service["ports"][color]]
        colors.add(matching[0] if matching else None)
    return colors.pop() if len(colors) == 1 else None


def release_sha256(compose_file, env_files):
    """One digest of the compose file, the .env compose reads beside it, and the env files it names."""
    digest = hashlib.sha256()
    dot_env = os.path.join(os.path.dirname(compose_file), ".env")
    for path in [compose_file, dot_env, *env_files]:
        digest.update(path.encode() + b"\0")
        with contextlib.suppress(FileNotFoundError), open(path, "rb") as handle:
            digest.update(handle.read())
        digest.update(b"\0")
    return digest.hexdigest()


def plan_steps(params, color, live, order, upstream_plan, state_path):
    project = f"{params['app']}-{color}"
    changed = [item["name"] for item in upstream_plan if item["changed"]]
    checks = "nginx -t, nginx -T, reload" if dump_command(params["nginx_test_command"]) else "nginx -t, reload"
    steps = [f"start and gate {project}: {', '.join(order)}"]
    if not upstream_plan:
        steps.append("no service behind nginx: nginx untouched")
    else:
        steps.append(f"switch upstreams to {color}: {', '.join(changed) or 'files unchanged'} ({checks})")
    if params["nginx_url"] and upstream_plan:
        steps.append(f"probe through nginx at {params['nginx_url']}")
    steps.append(f"record {params['release']} as active in {state_path}")
    if live and live != color:
        steps.append(f"drain {params['drain_seconds']:g} s, then stop {params['app']}-{live}")
    return steps


def record(module, result, started, state, state_path, params, color, images, digest):
    """Record the release as active on ``color``; returns the history entries dropped."""
    step = time.monotonic()
    # datetime.UTC needs Python 3.11; targets may run older Pythons.
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: UP017
    pruned = states.record_release(
        state, params["release"], color, params["release_dir"], images, now, params["keep_releases"], digest
    )
    try:
        states.save_state(state_path, state)
    except OSError as exc:
        fail(
            module,
            result,
            started,
            f"nginx routes to color {color} (release {params['release']}), but {state_path} could not be written: "
            f"{exc}; the next rollout reads the live color from the upstream files",
            exc,
        )
    result["timings"]["record"] = round(time.monotonic() - step, 3)
    return pruned


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    errors = validation_errors(params)
    if errors:
        module.fail_json(msg="; ".join(errors))
    if not health.HAS_JMESPATH and any(probe["expect"] for s in params["services"] for probe in s["probes"]):
        module.fail_json(
            msg=missing_required_lib("jmespath (Debian: python3-jmespath)"), exception=health.JMESPATH_IMPORT_ERROR
        )

    run = docker.module_runner(module)
    commands = []

    def traced(argv, env=None):
        commands.append(" ".join(argv))
        return run(argv, env)

    started = time.monotonic()
    timings = {}
    state_path = os.path.join(params["state_dir"] or f"/srv/berth/{params['app']}", "state.json")
    try:
        state = states.load_state(state_path, params["app"])
    except ValueError as exc:
        module.fail_json(msg=f"state_dir: {exc}")
    # nginx is the truth about which color serves: state.json lags it when a rollout was interrupted
    # between its switch and its record.
    live = live_color_from_upstreams(params)
    if live and live != states.active_color(state):
        module.warn(
            f"the upstream files in {params['upstreams_dir']} point at color {live} but {state_path} names "
            f"{states.active_color(state)}: {live} is taken as live (an earlier rollout stopped after its switch)"
        )
        previous = {"color": live, "release": None}
    else:
        previous = {"color": states.active_color(state), "release": states.active_release(state)}
    result = {
        "changed": False,
        "release": params["release"],
        "previous": previous,
        "gates": [],
        "commands": commands,
        "timings": timings,
    }

    compose_file = os.path.join(params["release_dir"], params["compose_file"])
    try:
        digest = release_sha256(compose_file, docker.compose_env_files(traced, compose_file))
    except docker.DockerError as exc:
        module.fail_json(msg=f"release_dir: docker compose config refused {compose_file}: {exc}", **result)
    # The same release id with a changed compose or env file (configuration, secrets) is rolled out again.
    recorded = states.find_release(state, params["release"]) or {}
    serving = (
        previous["release"] == params["release"]
        and previous["color"]
        and recorded.get("release_sha256") in (None, digest)
    )
    color = previous["color"] if serving else states.next_color(previous["color"])
    planned = desired_upstreams(params, color)
    upstream_plan = [
        {"name": name, "path": path, "ports": ports, "changed": upstreams.read_file(path) != content}
        for name, path, content, ports in planned
    ]
    env = compose_environment(params, color)
    try:
        compose_order = docker.compose_services(traced, compose_file, env)
    except docker.DockerError as exc:
        module.fail_json(msg=f"release_dir: docker compose config refused {compose_file}: {exc}", **result)
    unknown = [s["name"] for s in params["services"] if s["name"] not in compose_order]
    if unknown:
        module.fail_json(
            msg=f"services: {', '.join(unknown)} not in {compose_file} (it has {', '.join(compose_order)})", **result
        )
    order = [s["name"] for s in params["services"]] + [
        name for name in compose_order if name not in {s["name"] for s in params["services"]}
    ]
    result.update(
        color=color,
        plan={
            "color": color,
            "project": f"{params['app']}-{color}",
            "order": order,
            "upstreams": upstream_plan,
            "steps": plan_steps(params, color, previous["color"], order, upstream_plan, state_path),
        },
    )
    if module._diff:
        result["diff"] = [
            {"before_header": path, "after_header": path, "before": upstreams.read_file(path) or "", "after": content}
            for _name, path, content, _ports in planned
            if upstreams.read_file(path) != content
        ]

    if serving and not any(item["changed"] for item in upstream_plan):
        try:
            still_serving = color_is_serving(traced, params, color)
        except docker.DockerError as exc:
            module.fail_json(
                msg=f"could not tell whether color {color} still serves release {params['release']}: {exc}", **result
            )
        if still_serving:
            result["plan"]["steps"] = []
            module.exit_json(**result)
    if module.check_mode:
        result["changed"] = True
        module.exit_json(**result)

    result["changed"] = True
    project = f"{params['app']}-{color}"
    step = time.monotonic()
    try:
        try:
            start_and_gate(traced, params, color, order, env, result["gates"])
            images = release_images(traced, project)
        finally:
            timings["start_and_gate"] = round(time.monotonic() - step, 2)
    except (RolloutFailed, docker.DockerError) as exc:
        if color != previous["color"]:
            stop_quietly(traced, project, params["stop_timeout"])
        fail(
            module,
            result,
            started,
            f"rollout of {params['release']} stopped before the switch, traffic untouched: {exc}",
            exc,
        )

    step = time.monotonic()
    try:
        replaced = switch_upstreams(module, params, planned, commands)
    except RolloutFailed as exc:
        if color != previous["color"]:
            stop_quietly(traced, project, params["stop_timeout"])
        fail(module, result, started, f"rollout of {params['release']}: {exc}", exc)
    timings["switch"] = round(time.monotonic() - step, 3)

    step = time.monotonic()
    failed_gate = probe_through_nginx(params, color, result["gates"]) if params["nginx_url"] else None
    timings["nginx_probe"] = round(time.monotonic() - step, 2)
    if failed_gate:
        exc = RolloutFailed(gate_failure_message(failed_gate, []), failed_gate=failed_gate)
        restore_upstreams(replaced)
        rc, message = nginx_command(module, commands, params["nginx_reload_command"])
        if rc != 0:
            # nginx did not take the previous files back, so it still routes to the new color: keep
            # that color running, and make the files and state.json say so too.
            for _name, path, content, _ports in planned:
                upstreams.write_atomically(path, content)
            record(module, result, started, state, state_path, params, color, images, digest)
            fail(
                module,
                result,
                started,
                f"rollout of {params['release']} failed through nginx and switching back failed (nginx reload: "
                f"{message}): traffic is still on color {color} (release {params['release']}), which keeps running "
                f"and is recorded as active; the upstream files point at it. {exc}",
                exc,
            )
        if color != previous["color"]:
            stop_quietly(traced, project, params["stop_timeout"])
        fail(
            module,
            result,
            started,
            f"rollout of {params['release']} switched back to the previous upstreams: {exc}",
            exc,
        )

    # Recorded before the drain: from here on nginx routes to the new color, whatever happens next.
    pruned = record(module, result, started, state, state_path, params, color, images, digest)

    if previous["color"] and previous["color"] != color:
        step = time.monotonic()
        time.sleep(params["drain_seconds"])
        timings["drain"] = round(time.monotonic() - step, 2)
        step = time.monotonic()
        old_project = f"{params['app']}-{previous['color']}"
        try:
            docker.compose_stop(traced, old_project, params["stop_timeout"])
        except docker.DockerError as exc:
            fail(
                module,
                result,
                started,
                f"release {params['release']} serves on color {color} and is recorded as active, "
                f"but stopping the old color {old_project} failed: {exc}",
                exc,
            )
        timings["stop_old"] = round(time.monotonic() - step, 2)

    timings["total"] = round(time.monotonic() - started, 2)
    module.exit_json(images=images, pruned_releases=pruned, history=state["releases"], **result)


def stop_quietly(run, project, timeout):
    """Stop a color on the way out of a failure; a failure to stop must not hide the first error."""
    with contextlib.suppress(docker.DockerError):
        docker.compose_stop(run, project, timeout)


def fail(module, result, started, message, exc):
    result["timings"]["total"] = round(time.monotonic() - started, 2)
    module.fail_json(msg=message, **result, **getattr(exc, "details", {}))


if __name__ == "__main__":
    main()
