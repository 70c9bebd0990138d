# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""compose_rollout's side effects: what it observes before planning, and ``apply(plan)``.

``apply`` starts the new color service by service behind its gates, switches the upstream files,
probes through nginx, records the release, drains and stops the old color. Every failure leaves
through ``unwind()``, which stops the new color where it does not serve and raises RolloutFailed
with the message naming the step; the partial results (gates, commands, timings) stay in ``result``.

Every function takes ``run(argv, env=None) -> (rc, stdout, stderr)``, as _docker_cli does.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import time

from ansible_collections.berth.stack.plugins.module_utils import _docker_cli as docker
from ansible_collections.berth.stack.plugins.module_utils import _health as health
from ansible_collections.berth.stack.plugins.module_utils import _nginx_upstream as upstreams
from ansible_collections.berth.stack.plugins.module_utils import _release_state as states
from ansible_collections.berth.stack.plugins.module_utils import _rollout_plan as planning
from ansible_collections.berth.stack.plugins.module_utils import _service_model as model

HEALTH_POLL_SECONDS = 0.5


class RolloutFailed(Exception):
    """A step failed; ``details`` (such as ``failed_gate``) goes into the module's result."""

    def __init__(self, message, **details):
        super().__init__(message)
        self.details = details


def traced(run, commands):
    """``run`` that appends every command line to ``commands`` (the module returns them)."""

    def traced_run(argv, env=None):
        commands.append(" ".join(argv))
        return run(argv, env)

    return traced_run


@contextlib.contextmanager
def timed(result, step):
    """Record the seconds ``step`` took in ``result['timings']``, also when it fails."""
    started = time.monotonic()
    try:
        yield
    finally:
        result["timings"][step] = round(time.monotonic() - started, 3)


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


def observe(params, run):
    """What plan_rollout() needs from the host, each read once."""
    try:
        state = states.load_state(planning.state_path(params), params["app"])
    except ValueError as exc:
        raise RolloutFailed(f"state_dir: {exc}") from exc
    compose_file = planning.compose_path(params)
    services = [model.with_defaults(params["app"], raw) for raw in params["services"]]
    try:
        digest = release_sha256(compose_file, docker.compose_env_files(run, compose_file))
        # The service list does not depend on the color: blue's ports are as good as green's to resolve it.
        order = docker.compose_services(run, compose_file, model.compose_environment(services, states.COLORS[0]))
    except docker.DockerError as exc:
        raise RolloutFailed(f"release_dir: docker compose config refused {compose_file}: {exc}") from exc
    return {
        "state": state,
        "upstream_files": {
            path: upstreams.read_file(path) for path in planning.upstream_paths(services, params["upstreams_dir"])
        },
        "release_sha256": digest,
        "compose_services": order,
    }


def report(plan, diff=False):
    """The result keys a plan gives, before anything runs."""
    result = {"color": plan["color"], "previous": plan["previous"], "plan": planning.public_plan(plan)}
    if diff:
        result["diff"] = plan["diff"]
    return result


def still_serving(run, plan):
    """True when every container of the plan's color runs (and is healthy where it has a HEALTHCHECK)."""
    try:
        documents = docker.containers(run, plan["project"])
    except docker.DockerError as exc:
        raise RolloutFailed(
            f"could not tell whether color {plan['color']} still serves release {plan['release']}: {exc}"
        ) from exc
    if not documents:
        return False
    for document in documents:
        status, health_status = docker.container_state(document)
        if status != "running" or health_status not in (None, "healthy"):
            return False
    return set(plan["listed"]) <= {doc["Config"]["Labels"].get(docker.COMPOSE_LABEL_SERVICE) for doc in documents}


def wait_healthy(run, project, service, timeout):
    """Wait until the service's containers run and are healthy; return (passed, documents, reason)."""
    deadline = time.monotonic() + timeout
    while True:
        documents = docker.containers(run, project, service)
        container_states = [docker.container_state(doc) for doc in documents]
        if not documents:
            reason = "no container was created"
        elif any(status in ("exited", "dead") for status, _health in container_states):
            return False, documents, "a container stopped: " + ", ".join(status for status, _health in container_states)
        elif any(health_status == "unhealthy" for _status, health_status in container_states):
            return False, documents, "Docker reports the HEALTHCHECK unhealthy"
        elif all(
            status == "running" and health_status in (None, "healthy") for status, health_status in container_states
        ):
            return True, documents, None
        else:
            reason = "still " + ", ".join(
                f"{status}/{health_status or 'no healthcheck'}" for status, health_status in container_states
            )
        if time.monotonic() >= deadline:
            return False, documents, f"not healthy within {timeout:g} s ({reason})"
        time.sleep(HEALTH_POLL_SECONDS)


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


def gate_failed(plan, run, gate, documents=None):
    """Raise the failure of ``gate`` with the health log and last log lines of the service's containers."""
    if documents is None:
        try:
            documents = docker.containers(run, plan["project"], gate["service"])
        except docker.DockerError:
            documents = []
    raise RolloutFailed(gate_failure_message(gate, diagnostics(run, documents)), failed_gate=gate)


def probe_gate(plan, run, gates, kind, service, probe, url, host_header=None):
    """One HTTP gate (``http`` on a replica's port, ``nginx`` through nginx): recorded, and raised when it fails."""
    headers = dict(probe["headers"])
    if host_header:
        headers["Host"] = host_header

    def once():
        return health.probe(
            url, probe["method"], probe["status"], probe["expression"], headers, probe["request_timeout"]
        )

    passed, attempts, last = health.probe_until(once, probe["successes"], probe["interval"], probe["timeout"])
    gates.append({"gate": kind, "service": service["name"], "url": url, "passed": passed, "attempts": attempts})
    if not passed:
        gate = {"gate": kind, "service": service["name"], "color": plan["color"], "passed": passed}
        gate.update(attempts=attempts, last=last, url=url)
        gate.update({key: probe[key] for key in ("method", "status", "expect", "successes")})
        gate_failed(plan, run, gate)


def start_and_gate(plan, run, gates):
    """Start the color service by service; raise RolloutFailed at the first gate that fails."""
    last = len(plan["services"]) - 1
    for index, service in enumerate(plan["services"]):
        started = time.monotonic()
        docker.compose_up(
            run,
            plan["project"],
            plan["compose_file"],
            [service["name"]],
            plan["environment"],
            remove_orphans=index == last,
        )
        passed, documents, reason = wait_healthy(run, plan["project"], service["name"], service["health_timeout"])
        seconds = round(time.monotonic() - started, 2)
        gates.append({"gate": "health", "service": service["name"], "passed": passed, "seconds": seconds})
        if not passed:
            gate = {"gate": "health", "service": service["name"], "color": plan["color"], "reason": reason}
            gate_failed(plan, run, gate, documents)
        for probe in service["probes"]:
            for port in model.service_ports(service, plan["color"]):
                probe_gate(plan, run, gates, "http", service, probe, f"http://127.0.0.1:{port}{probe['path']}")


def probe_through_nginx(plan, run, gates):
    settings = plan["settings"]
    if not settings["nginx_url"]:
        return
    for service in plan["services"]:
        if not service["upstream"]:
            continue
        for probe in service["probes"]:
            url = settings["nginx_url"] + (probe["nginx_path"] or probe["path"])
            probe_gate(plan, run, gates, "nginx", service, probe, url, settings["nginx_host_header"])


def release_images(run, project):
    images = {}
    for document in docker.containers(run, project):
        service = document["Config"]["Labels"].get(docker.COMPOSE_LABEL_SERVICE)
        images.setdefault(service, docker.image_record(run, document))
    return images


def nginx_command(run, argv):
    rc, out, err = run(argv)
    return rc, (err or out).strip()


def restore_upstreams(plan):
    for item in plan["upstreams"]:
        upstreams.restore(item["path"], item["before"])


def write_upstreams(plan):
    for item in plan["upstreams"]:
        if item["changed"]:
            upstreams.write_atomically(item["path"], item["content"])


def switch_upstreams(plan, run):
    """Write the upstream files, check nginx reads and accepts them, reload; restore and raise when not."""
    settings = plan["settings"]
    if not plan["upstreams"]:
        # Nothing of this app is behind nginx (workers only): a reload would only close other
        # apps' idle keep-alive connections.
        return
    write_upstreams(plan)
    rc, message = nginx_command(run, settings["nginx_test_command"])
    if rc != 0:
        restore_upstreams(plan)
        raise RolloutFailed(f"nginx -t refused the new upstream files, previous files restored: {message}")
    dump = plan["nginx_dump_command"]
    if dump:
        rc, out, err = run(dump)
        read = {os.path.realpath(path) for path in upstreams.dumped_files(out)}
        unread = [item["path"] for item in plan["upstreams"] if os.path.realpath(item["path"]) not in read]
        if rc != 0 or unread:
            restore_upstreams(plan)
            why = (
                f"failed: {(err or out).strip()[-500:]}"
                if rc != 0
                else f"shows nginx does not read {', '.join(unread)}"
            )
            raise RolloutFailed(
                f"`{' '.join(dump)}` {why}; upstreams_dir={settings['upstreams_dir']!r} must be the directory "
                "nginx includes (the nginx role's upstreams directory); previous files restored, traffic untouched"
            )
    rc, message = nginx_command(run, settings["nginx_reload_command"])
    if rc != 0:
        restore_upstreams(plan)
        nginx_command(run, settings["nginx_reload_command"])
        raise RolloutFailed(f"nginx reload failed, previous upstream files restored: {message}")


def record(plan, result):
    """Record the release as active on the plan's color, with its images; history and pruned go to ``result``."""
    # datetime.UTC needs Python 3.11; targets may run older Pythons.
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: UP017
    state = plan["state"]
    with timed(result, "record"):
        pruned = states.record_release(
            state,
            plan["release"],
            plan["color"],
            plan["release_dir"],
            result["images"],
            now,
            plan["settings"]["keep_releases"],
            plan["release_sha256"],
        )
        try:
            states.save_state(plan["state_path"], state)
        except OSError as exc:
            raise RolloutFailed(
                f"nginx routes to color {plan['color']} (release {plan['release']}), but {plan['state_path']} could "
                f"not be written: {exc}; the next rollout reads the live color from the upstream files"
            ) from exc
    result.update(pruned_releases=pruned, history=state["releases"])


def stop_quietly(run, project, timeout):
    """Stop a color on the way out of a failure; a failure to stop must not hide the first error."""
    with contextlib.suppress(docker.DockerError):
        docker.compose_stop(run, project, timeout)


def unwind(plan, run, message, exc):
    """The one way out of a failed step: stop the new color unless it served already, then raise."""
    if plan["color"] != plan["previous"]["color"]:
        stop_quietly(run, plan["project"], plan["settings"]["stop_timeout"])
    raise RolloutFailed(message, **getattr(exc, "details", {})) from exc


def switch_back(plan, run, result, exc):
    """After a failed probe through nginx: the previous upstream files, or, when nginx does not take them
    back, the new color kept serving and recorded."""
    restore_upstreams(plan)
    rc, message = nginx_command(run, plan["settings"]["nginx_reload_command"])
    if rc == 0:
        unwind(plan, run, f"rollout of {plan['release']} switched back to the previous upstreams: {exc}", exc)
    # nginx did not take the previous files back, so it still routes to the new color: keep that color
    # running, and make the files and state.json say so too.
    write_upstreams(plan)
    record(plan, result)
    raise RolloutFailed(
        f"rollout of {plan['release']} failed through nginx and switching back failed (nginx reload: {message}): "
        f"traffic is still on color {plan['color']} (release {plan['release']}), which keeps running and is "
        f"recorded as active; the upstream files point at it. {exc}",
        **exc.details,
    ) from exc


def apply(plan, run, result):
    """Carry ``plan`` out; ``result`` receives gates, timings, images, history and pruned releases as they happen."""
    release = plan["release"]
    with timed(result, "start_and_gate"):
        try:
            start_and_gate(plan, run, result["gates"])
            result["images"] = release_images(run, plan["project"])
        except (RolloutFailed, docker.DockerError) as exc:
            unwind(plan, run, f"rollout of {release} stopped before the switch, traffic untouched: {exc}", exc)
    with timed(result, "switch"):
        try:
            switch_upstreams(plan, run)
        except RolloutFailed as exc:
            unwind(plan, run, f"rollout of {release}: {exc}", exc)
    try:
        with timed(result, "nginx_probe"):
            probe_through_nginx(plan, run, result["gates"])
    except RolloutFailed as exc:
        switch_back(plan, run, result, exc)
    # Recorded before the drain: from here on nginx routes to the new color, whatever happens next.
    record(plan, result)
    old = plan["previous"]["color"]
    if old and old != plan["color"]:
        with timed(result, "drain"):
            time.sleep(plan["settings"]["drain_seconds"])
        old_project = f"{plan['app']}-{old}"
        with timed(result, "stop_old"):
            try:
                docker.compose_stop(run, old_project, plan["settings"]["stop_timeout"])
            except docker.DockerError as exc:
                raise RolloutFailed(
                    f"release {release} serves on color {plan['color']} and is recorded as active, "
                    f"but stopping the old color {old_project} failed: {exc}"
                ) from exc
