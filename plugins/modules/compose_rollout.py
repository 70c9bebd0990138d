#!/usr/bin/python
# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: compose_rollout
short_description: Health-gated blue/green rollout of a Compose release behind nginx, switched without a reload
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
  - "Each upstream's file (C(<upstreams_dir>/<upstream>.conf)) holds one group per color,
    C(<upstream>__blue) and C(<upstream>__green), each with that color's fixed ports, beside the
    C(<upstream>) group the nginx role's placeholder (or an older rollout) wrote. The nginx role's sites choose
    the group at every request from the color markers beside the file, C(<upstream>.blue) and
    C(<upstream>.green) (green wins when both exist; with neither, C(<upstream>) serves)."
  - Before the new color starts, the upstream files whose groups change (a first deploy, a change of ports or
    replicas) are written (atomic rename), checked with C(nginx -t) and C(nginx -T) (nginx reads them, defines
    the groups and tests the markers) and nginx is reloaded gracefully; the previous files come back when
    nginx refuses them. No marker moves then, so traffic does not. Otherwise nginx is tested, not reloaded.
  - Once the services pass their gates, C(nginx -T) checks once more that nginx defines the new color's groups
    and tests its markers, and each service is checked once more; then the switch moves the markers (written
    aside, renamed into place, the other color's removed), with no reload, so keep-alive connections stay
    open and every new request goes to the new color. Its duration is C(switch) in RV(timings), the check's
    C(switch_check). The probes then run again
    through nginx, and a failure there moves the markers back (no reload either). When the markers cannot be
    moved back, the new color keeps running and is recorded, because nginx still routes to it. An app with no
    service behind nginx (no O(services[].upstream), as with workers and internal services with
    O(services[].behind_nginx=false)) leaves nginx untouched, with no test, no reload and no probes through nginx.
  - A probe fails fast, after O(services[].probes[].failures) failures in a row (failures inside the service's
    O(services[].boot_grace) do not count), or at once when a container of the service stopped. Right before the
    switch every service is checked once more (running, healthy, one answer to each probe on its own ports).
  - "After the switch comes the watch window (O(watch_seconds)): the old color keeps running while the new
    color's containers (running, not C(unhealthy)) and every probe, on the new color's ports and through nginx,
    are checked round after round. A stopped or unhealthy container, or O(services[].probes[].failures) failures
    in a row of one probe, switches traffic back at once and fails with the reason."
  - Only after the window is the release recorded as serving in C(<state_dir>/state.json), with its image IDs
    and digests; then the old color is stopped (kept, so a rollback starts it again in seconds), once at least
    O(drain_seconds) have passed since the switch.
  - Everything after the plan runs on the host in a detached process, so the rollout ends in one consistent
    state (served and recorded, or switched back) when the controller, its connection or the module's process
    dies. With O(lock_dir) the module writes the lock's heartbeat while the controller is there; a rollout whose
    controller is gone releases that lock itself at its end and leaves its result in
    C(<state_dir>/last-rollout.json).
  - A release recorded in C(state.json) is immutable. When its compose file or env files no longer match the
    recorded C(release_sha256), the module refuses before anything runs; this is also what protects a rollback
    from a tampered release directory. Deploy a change under a new release id.
  - The live color is the one the color markers (or, on a host deployed before they existed, the upstream
    files' ports) send every upstream to; C(state.json) decides only when they do not agree (first deploy,
    placeholder). So a rollout interrupted after its switch never makes the next one start in the live color.
    The markers are files, so the live color survives an nginx restart and a reboot.
  - "The compose file receives each service's host port(s) for the color being started in the environment
    variable C(BERTH_PORT_<SERVICE>) (service name upper-cased, other characters as C(_)), for example
    C(ports: [\"127.0.0.1:${BERTH_PORT_BACKEND}:8000\"]), and the color in C(BERTH_COLOR)."
  - A rollback is the same call with an earlier release's O(release) and O(release_dir).
  - Each recorded release keeps its images on the host - one created, never started container per service
    (C(<app>-keep-<release>-<service>), label C(berth.keep.app)) holds the recorded image, so
    C(docker image prune --all) leaves what a rollback needs; keepers of releases pruned from the history go.
author:
  - berth.stack maintainers (@berth-stack)
requirements:
  - docker CLI with the Compose v2 plugin on the target
  - nginx on the target, including the upstream files from O(upstreams_dir), with sites that choose each
    upstream's group from its color markers (the P(berth.stack.nginx#role) role's sites do)
  - jmespath on the target (Debian package C(python3-jmespath)) when a probe has O(services[].probes[].expect)
extends_documentation_fragment:
  - berth.stack.services
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Returns the plan (colors, upstream file changes, marker switches) and changes nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: Shows the upstream files that change and the color markers put in place or removed.
  idempotent:
    description:
      - When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
    support: full
    details: The release that serves, healthy, with its upstream groups and markers in place, is C(changed=false).
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
  upstreams_dir:
    description:
      - Directory of the upstream files, owned by the nginx role and included by nginx, and of the color
        markers the sites test.
    type: path
    default: /etc/nginx/berth/upstreams
  upstream_keepalive:
    description: Idle keepalive connections per nginx worker to each upstream.
    type: int
    default: 16
  nginx_url:
    description:
      - Base URL of nginx for the probes after the switch, for example C(http://127.0.0.1) or C(https://127.0.0.1).
      - For a site with TLS at nginx (its plain HTTP port redirects), give C(https://127.0.0.1) and
        O(nginx_host_header); see O(nginx_ca_file) for how the certificate is verified.
      - An empty string skips the probes through nginx.
    type: str
    default: http://127.0.0.1
  nginx_host_header:
    description:
      - C(Host) header for the probes through nginx, to reach the app's site.
      - With an https O(nginx_url), also the name sent as SNI and the name the certificate is verified for;
        required then.
    type: str
  nginx_ca_file:
    description:
      - For an https O(nginx_url), the certificate file on the host the probes verify nginx's certificate
        against; any certificate in it is trusted as an anchor, so the site's own certificate is enough.
      - Without it, the module takes the C(ssl_certificate) of the server that C(nginx -T) shows listening
        with ssl for O(nginx_host_header) (and fails before the reload when there is none); without C(nginx -T)
        (an O(nginx_test_command) without C(-t)), the host's system CAs.
    type: path
  nginx_test_command:
    description:
      - Command that checks the complete nginx configuration.
      - When it contains C(-t), the module also runs it with C(-T) in its place and fails unless nginx
        reads every upstream file, defines the new color's groups and tests every color marker (an
        O(upstreams_dir) nginx does not include, or a site that does not choose by the markers, is caught
        before the reload and again right before the switch).
    type: list
    elements: str
    default: [nginx, -t, -q]
  nginx_reload_command:
    description: Command that reloads nginx gracefully, only when an upstream file changed.
    type: list
    elements: str
    default: [systemctl, reload, nginx]
  drain_seconds:
    description:
      - Seconds the old color keeps running at least after the switch, so requests in flight finish.
      - The watch window counts toward it.
    type: float
    default: 5
  watch_seconds:
    description:
      - Seconds the new color is watched after the switch, with the old color still running, before the release
        is recorded and the old color stopped. A failure in the window switches back at once.
      - C(0) disables the window. A release rolled out again in its own color has nothing to go back to and is
        not watched.
    type: float
    default: 30
  lock_dir:
    description:
      - The deploy lock directory the caller holds (the P(berth.stack.compose_app#role) role's C(deploy.lock)).
      - The module writes C(<lock_dir>/heartbeat) every second while the controller is there, and
        C(<lock_dir>/rollout.pid) while the host-side rollout runs. When the controller is gone, the host-side
        rollout removes the lock at its end, if C(<lock_dir>/owner) is still the one it started under.
      - Unset, no lock is touched.
      - With O(check_unchanged), the lock a deploy would take; when it exists, another deploy runs and the answer is no.
    type: path
  heartbeat_timeout:
    description:
      - Seconds without a heartbeat after which the host-side rollout, at its end, takes the controller for gone
        and releases O(lock_dir).
    type: float
    default: 15
  stop_timeout:
    description: Seconds Docker gives a container to stop before killing it.
    type: int
    default: 10
  keep_releases:
    description: Releases kept in the state file's history (at least 2, so the idle color stays recorded).
    type: int
    default: 5
  fingerprint:
    description:
      - A digest of everything the caller's deploy depends on (the P(berth.stack.compose_app#role) role hashes its
        variables, templates and migration files).
      - Written to C(<state_dir>/fingerprint.json) with the release once the rollout ends with the release serving
        (also when it already served). The role removes that file when a deploy starts, so a deploy that fails
        half-way leaves none.
    type: str
  check_unchanged:
    description:
      - Only tell whether a deploy of O(release) with this O(fingerprint) has nothing to do, in RV(unchanged), and
        change nothing, in check mode or not.
      - "Nothing to do: O(release) is active in C(state.json), C(fingerprint.json) records O(release) with
        O(fingerprint), no O(lock_dir) exists, every upstream file holds its groups and the markers select the
        active color, and every container
        of the active color and of C(<app>-data) runs (healthy where it has a HEALTHCHECK), one at least per listed
        service and per O(data_services)."
      - It reads files and asks Docker once per project, with no C(docker compose), jmespath or probe.
    type: bool
    default: false
  data_services:
    description: With O(check_unchanged), the services of the Compose project C(<app>-data) that must run.
    type: list
    elements: str
    default: []
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
        image: registry.example.com/demo/backend:2025-01-15.1
        container_port: 8000  # behind nginx as upstream demo_backend
        ports: {blue: 18210, green: 18220}
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
  returned: unless O(check_unchanged)
  type: dict
  sample: {"color": "blue", "release": "2025-01-14.3"}
plan:
  description: What the rollout does (or did), step by step, including every upstream file change and marker switch.
  returned: unless O(check_unchanged)
  type: dict
  sample:
    color: green
    project: demo-green
    order: [backend, worker, frontend]
    upstreams:
      - {name: demo_backend, group: demo_backend__green, path: /etc/nginx/berth/upstreams/demo_backend.conf,
         ports: [18220], changed: false, switch: true}
    steps:
      - "upstream groups unchanged, no reload (nginx -t, nginx -T)"
      - "start and gate demo-green: backend, worker, frontend"
      - "switch demo_backend, demo_frontend to green by the color markers (nginx -T, rename; no reload)"
      - "probe through nginx at http://127.0.0.1"
      - "watch demo-green for 30 s, demo-blue kept running; switch back at a failure"
      - "record 2025-01-15.1 as active in /srv/berth/demo/state.json"
      - "drain (at least 5 s after the switch), then stop demo-blue"
  contains:
    upstreams:
      description:
        - Per upstream, its group for the new color (C(group)), its file (C(path)) and whether that file changes
          (C(changed), which makes the rollout reload nginx before the new color starts), and whether its color
          markers move (C(switch)).
      type: list
      elements: dict
    steps:
      description: The steps the rollout takes, in order; empty when the release already serves.
      type: list
      elements: str
gates:
  description:
    - The result of every gate, in the order they ran; C(gate) is C(health), C(http) (a replica's own port),
      C(recheck) (right before the switch), C(nginx) (through nginx), C(watch) (the window's rounds, or the
      container check that failed in it) or C(watch-nginx).
  returned: unless O(check_unchanged)
  type: list
  elements: dict
  sample:
    - {gate: health, service: backend, passed: true, seconds: 4.1}
    - {gate: http, service: backend, url: "http://127.0.0.1:18220/api/health", passed: true, attempts: 3}
failed_gate:
  description:
    - On a failed gate, the gate (as in RV(gates)), the service and color, and either the reason (health,
      stopped container) or, for HTTP gates, the URL, the expectation and the last probe result (status and an
      excerpt of the body). The last line of each health log entry and the last log lines are in RV(ignore:msg).
    - "When probes failed in the watch window because the service's containers had stopped by then, C(cause) says
      so (for example C(a container stopped: exited)), in RV(ignore:msg) too."
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
unchanged:
  description: With O(check_unchanged), whether the deploy has nothing to do.
  returned: when O(check_unchanged) is true
  type: bool
  sample: true
unchanged_reason:
  description: With O(check_unchanged), why the deploy has something to do; null when RV(unchanged).
  returned: when O(check_unchanged) is true
  type: str
  sample: "the inputs of this deploy differ from those of the last complete deploy of release v1"
timings:
  description:
    - Seconds per step (nginx_prepare, start_and_gate, switch_check, switch, nginx_probe, watch, switch_back,
      record, drain, stop_old, keep_images, total).
    - C(switch) runs from the end of the last gate (the recheck) to every marker in place (written aside,
      renamed, the old ones removed, the directory synced); before it nginx sends every new request to the old
      color, after it to the new one. C(switch_check) is the C(nginx -T) check right before the recheck (part of
      C(start_and_gate)), C(nginx_prepare) the test before the new color starts and, when an upstream file
      changed, the reload.
  returned: unless O(check_unchanged)
  type: dict
  sample: {"nginx_prepare": 0.02, "start_and_gate": 6.2, "switch_check": 0.01, "switch": 0.004, "nginx_probe": 2.0,
           "watch": 30.0, "record": 0.01, "drain": 0.0, "stop_old": 0.6, "total": 39.0}
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.berth.stack.plugins.module_utils import _docker_cli as docker
from ansible_collections.berth.stack.plugins.module_utils import _health as health
from ansible_collections.berth.stack.plugins.module_utils import _host_side as host_side
from ansible_collections.berth.stack.plugins.module_utils import _rollout_apply as rollout
from ansible_collections.berth.stack.plugins.module_utils import _rollout_plan as planning


def main():
    module = AnsibleModule(argument_spec=planning.ARGUMENT_SPEC, supports_check_mode=True)
    errors = planning.validation_errors(module.params)
    if errors:
        module.fail_json(msg="; ".join(errors))
    commands = []
    run = rollout.traced(docker.module_runner(module), commands)
    if module.params["check_unchanged"]:
        module.exit_json(commands=commands, **rollout.unchanged(module.params, run))
    if not health.HAS_JMESPATH and planning.uses_expressions(module.params):
        module.fail_json(
            msg=missing_required_lib("jmespath (Debian: python3-jmespath)"), exception=health.JMESPATH_IMPORT_ERROR
        )
    result = {"changed": False, "release": module.params["release"], "gates": [], "commands": commands, "timings": {}}
    started = time.monotonic()
    try:
        plan = planning.plan_rollout(module.params, rollout.observe(module.params, run))
        for warning in plan["warnings"]:
            module.warn(warning)
        result.update(rollout.report(plan, diff=module._diff))
        if plan["serving"] and rollout.still_serving(run, plan):
            result["plan"]["steps"] = []
            if not module.check_mode:
                rollout.remember(plan)
            module.exit_json(**result)
        result["changed"] = True
        if module.check_mode:
            module.exit_json(**result)
        # From here on the host carries the rollout to its end by itself, whatever happens to the controller.
        result = host_side.run_detached(
            lambda: rollout.outcome(plan, run, result, quiet_run=docker.module_runner(module)),
            os.path.dirname(plan["state_path"]),
            module.params["lock_dir"],
            module.params["heartbeat_timeout"],
        )
    except (rollout.RolloutFailed, planning.PlanError) as exc:
        result.update(failed=True, msg=str(exc), **getattr(exc, "details", {}))
    result["timings"]["total"] = round(time.monotonic() - started, 2)
    for warning in result.pop("warnings", []):
        module.warn(warning)
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
