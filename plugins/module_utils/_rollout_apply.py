# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""compose_rollout's side effects: what it observes before planning, and ``apply(plan)``.

``apply`` first makes nginx ready for the new color (its upstream groups written, tested and
reloaded only when they changed; traffic does not move), starts the new color service by service
behind its gates, checks it once more right before switching the color markers (no reload), probes
through nginx, watches the new color for a window while the old one still runs, then records the
release and stops the old color. Every failure leaves
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
# The longest pause between two rounds of the watch window (a probe with a shorter interval shortens it).
WATCH_POLL_SECONDS = 0.5


class WatchFailed(Exception):
    """A failure in the watch window, raised before its diagnostics are gathered: traffic goes back first."""

    def __init__(self, gate):
        super().__init__(gate["gate"])
        self.gate = gate


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


def release_sha256(compose_file, input_files):
    """One digest of the compose file, the .env compose reads beside it, and the env and secret files it names."""
    digest = hashlib.sha256()
    dot_env = os.path.join(os.path.dirname(compose_file), ".env")
    for path in [compose_file, dot_env, *input_files]:
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
        digest = release_sha256(compose_file, docker.compose_input_files(run, compose_file))
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


def unchanged(params, run):
    """check_unchanged's answer (RETURN unchanged, unchanged_reason), from files and Docker alone: the
    release serves with the same fingerprint, its color and the data services run healthy, no lock is held."""
    path = planning.state_path(params)
    result = {"changed": False, "release": params["release"], "unchanged": False}
    try:
        state = states.load_state(path, params["app"])
    except ValueError as exc:
        return dict(result, unchanged_reason=f"state_dir: {exc}")
    services = [model.with_defaults(params["app"], raw) for raw in params["services"]]
    observed = {
        "state": state,
        "fingerprint": states.load_fingerprint(path),
        "locked": bool(params["lock_dir"]) and os.path.isdir(params["lock_dir"]),
        "services": services,
        "upstream_files": {
            upstream: upstreams.read_file(upstream)
            for upstream in planning.upstream_paths(services, params["upstreams_dir"])
        },
    }
    color = states.active_color(state)
    reason = planning.unchanged_reason(params, observed)
    projects = [
        (f"{params['app']}-{color}", [service["name"] for service in services]),
        (f"{params['app']}-data", params["data_services"]),
    ]
    for project, names in projects if reason is None else []:
        try:
            if not _running_healthy(docker.containers(run, project), names):
                reason = f"a container of {project} is not running and healthy, or missing"
                break
        except docker.DockerError as exc:
            reason = f"could not ask Docker about {project}: {exc}"
            break
    return dict(result, color=color, unchanged=reason is None, unchanged_reason=reason)


def _running_healthy(documents, names):
    """Every container runs (healthy where it has a HEALTHCHECK) and each of ``names`` has one."""
    for document in documents:
        status, health_status = docker.container_state(document)
        if status != "running" or health_status not in (None, "healthy"):
            return False
    return set(names) <= {doc["Config"]["Labels"].get(docker.COMPOSE_LABEL_SERVICE) for doc in documents}


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
    return bool(documents) and _running_healthy(documents, plan["listed"])


def remember(plan):
    """Record the plan's fingerprint as the last complete deploy's (when it has one)."""
    if plan["fingerprint"]:
        states.save_fingerprint(plan["state_path"], plan["release"], plan["fingerprint"])


def _container_reason(documents):
    """Why a service's containers cannot serve as they are (stopped, unhealthy), or None."""
    container_states = [docker.container_state(doc) for doc in documents]
    if not documents:
        return "no container was created"
    if any(status in ("exited", "dead") for status, _health in container_states):
        return "a container stopped: " + ", ".join(status for status, _health in container_states)
    if any(health_status == "unhealthy" for _status, health_status in container_states):
        return "Docker reports the HEALTHCHECK unhealthy"
    return None


def container_trouble(run, project, service=None):
    """Why the project's (or one service's) containers cannot serve now, or None while they can."""
    try:
        return _container_reason(docker.containers(run, project, service))
    except docker.DockerError as exc:
        return f"Docker could not be asked about {project}: {exc}"


def wait_healthy(run, project, service, timeout, boot_grace=0):
    """Wait until the service's containers run and are healthy; return (passed, documents, reason).

    A stopped container ends the wait at once. Docker's "unhealthy" does too, except inside the
    boot grace (seconds from the start), where the app may still be booting.
    """
    started = time.monotonic()
    deadline = started + timeout
    while True:
        documents = docker.containers(run, project, service)
        container_states = [docker.container_state(doc) for doc in documents]
        reason = _container_reason(documents)
        in_grace = time.monotonic() - started < boot_grace
        if reason and documents and not (in_grace and reason.endswith("unhealthy")):
            return False, documents, reason
        if documents and all(
            status == "running" and health_status in (None, "healthy") for status, health_status in container_states
        ):
            return True, documents, None
        if documents:
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


def last_line(text):
    """The last non-empty line of a HEALTHCHECK's output: the error, not the Python traceback above it."""
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def gate_failure_message(gate, containers):
    service, color = gate["service"], gate["color"]
    if "reason" in gate:
        what = f"{gate['gate']} gate failed for service {service!r} on color {color}: {gate['reason']}"
    else:
        last = gate["last"]
        expectation = f"status {gate['status']}" + (f" and {gate['expect']!r}" if gate["expect"] else "")
        what = (
            f"{gate['gate']} gate failed for service {service!r} on color {color}: {gate['method']} {gate['url']} "
            f"expected {expectation} {gate['successes']} times in a row; last probe: {last['reason']} "
            f"(status {last['status']}, body {last['body']!r})"
        )
        if gate.get("cause"):
            what += f"; then the service's containers: {gate['cause']}"
    parts = [what]
    for item in containers:
        health_lines = (
            "; ".join(f"exit {e['exit_code']}: {last_line(e['output'])}" for e in item["health_log"]) or "none"
        )
        parts.append(f"{item['container']} ({item['state']}) health log: {health_lines}")
        parts.append(f"{item['container']} last log lines: " + " | ".join(item["log_tail"]))
    return ". ".join(parts)


def gate_failed(plan, run, gate, documents=None):
    """Raise the failure of ``gate`` with the health log and last log lines of the service's containers."""
    raise explained(plan, run, gate, documents)


def explained(plan, run, gate, documents=None):
    """RolloutFailed for ``gate``, with the health log and last log lines of the service's containers."""
    if documents is None:
        try:
            documents = docker.containers(run, plan["project"], gate["service"])
        except docker.DockerError:
            documents = []
    containers = diagnostics(run, documents)
    # The health logs in full (a HEALTHCHECK's Python traceback, say): shown with -vvv only.
    full = [f"{item['container']}: {entry['output']}" for item in containers for entry in item["health_log"]]
    details = (
        {"exception": "\n".join(full)} if any(entry["output"] for c in containers for entry in c["health_log"]) else {}
    )
    return RolloutFailed(gate_failure_message(gate, containers), failed_gate=gate, **details)


def probe_once(probe, url, host_header=None, tls=None):
    headers = dict(probe["headers"])
    if host_header:
        headers["Host"] = host_header
    timeout = probe["request_timeout"]
    return health.probe(url, probe["method"], probe["status"], probe["expression"], headers, timeout, tls)


def probe_failure(plan, kind, service, probe, url, attempts, last):
    gate = {"gate": kind, "service": service["name"], "color": plan["color"], "passed": False}
    gate.update(attempts=attempts, last=last, url=url)
    gate.update({key: probe[key] for key in ("method", "status", "expect", "successes", "failures")})
    return gate


def probe_gate(plan, run, gates, kind, service, probe, url, host_header=None, grace_until=None, tls=None):
    """One HTTP gate (``http`` on a replica's port, ``nginx`` through nginx): recorded, and raised when it
    fails: ``failures`` failures in a row (not counted before ``grace_until``), the timeout, or a
    container of the service that stopped."""

    def stopped():
        reason = container_trouble(run, plan["project"], service["name"])
        return reason if reason and "unhealthy" not in reason else None

    passed, attempts, last = health.probe_until(
        lambda: probe_once(probe, url, host_header, tls),
        probe["successes"],
        probe["interval"],
        probe["timeout"],
        failures=probe["failures"],
        abort=stopped,
        count_failures_from=grace_until,
    )
    gates.append({"gate": kind, "service": service["name"], "url": url, "passed": passed, "attempts": attempts})
    if not passed:
        gate_failed(plan, run, probe_failure(plan, kind, service, probe, url, attempts, last))


def direct_urls(plan, service, probe):
    return [f"http://127.0.0.1:{port}{probe['path']}" for port in model.service_ports(service, plan["color"])]


def nginx_probes(plan):
    """(service, probe, url) of every probe through nginx; none without nginx_url or upstreams."""
    settings = plan["settings"]
    if not settings["nginx_url"]:
        return []
    return [
        (service, probe, settings["nginx_url"] + (probe["nginx_path"] or probe["path"]))
        for service in plan["services"]
        if service["upstream"]
        for probe in service["probes"]
    ]


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
        passed, documents, reason = wait_healthy(
            run, plan["project"], service["name"], service["health_timeout"], service["boot_grace"]
        )
        seconds = round(time.monotonic() - started, 2)
        gates.append({"gate": "health", "service": service["name"], "passed": passed, "seconds": seconds})
        if not passed:
            gate = {"gate": "health", "service": service["name"], "color": plan["color"], "reason": reason}
            gate_failed(plan, run, gate, documents)
        for probe in service["probes"]:
            for url in direct_urls(plan, service, probe):
                probe_gate(plan, run, gates, "http", service, probe, url, grace_until=started + service["boot_grace"])


def recheck_before_switch(plan, run, gates):
    """Right before the switch: every service of the color still runs (healthy), and answers each probe
    once on its own ports. A release that broke since its gate never receives traffic."""
    for service in plan["services"]:
        reason = container_trouble(run, plan["project"], service["name"])
        if reason:
            gate_failed(
                plan, run, {"gate": "recheck", "service": service["name"], "color": plan["color"], "reason": reason}
            )
        for probe in service["probes"]:
            for url in direct_urls(plan, service, probe):
                last = probe_once(probe, url)
                gates.append({"gate": "recheck", "service": service["name"], "url": url, "passed": last["ok"]})
                if not last["ok"]:
                    gate_failed(plan, run, probe_failure(plan, "recheck", service, probe, url, 1, last))


def probe_through_nginx(plan, run, gates):
    for service, probe, url in nginx_probes(plan):
        host_header = plan["settings"]["nginx_host_header"]
        probe_gate(plan, run, gates, "nginx", service, probe, url, host_header, tls=plan.get("nginx_tls"))


def watch(plan, run, result, clock=time.monotonic, sleep=time.sleep):
    """The watch window after the switch, while the old color still runs: the new color's containers
    (running, not unhealthy) and every probe, on its ports and through nginx, checked round after
    round. Raise WatchFailed at a stopped or unhealthy container or at ``failures`` failures in a
    row of one probe (the caller switches back, then explains); the rounds' Docker commands are not
    traced (there are hundreds)."""
    seconds = plan["settings"]["watch_seconds"]
    host_header = plan["settings"]["nginx_host_header"]
    checks = [
        ("watch", service, probe, url, None)
        for service in plan["services"]
        for probe in service["probes"]
        for url in direct_urls(plan, service, probe)
    ] + [("watch-nginx", service, probe, url, host_header) for service, probe, url in nginx_probes(plan)]
    pause = min([probe["interval"] for _kind, _service, probe, _url, _host in checks] + [WATCH_POLL_SECONDS])
    failed_in_a_row = [0] * len(checks)
    deadline = clock() + seconds
    rounds, next_docker_check = 0, clock()
    while clock() < deadline:
        rounds += 1
        round_started = clock()
        # Docker is asked every WATCH_POLL_SECONDS; the probes, cheaper, every round.
        if clock() >= next_docker_check:
            _stop_at_container_trouble(plan, result, rounds, container_trouble(run, plan["project"]))
            next_docker_check = clock() + WATCH_POLL_SECONDS
        for number, (kind, service, probe, url, host) in enumerate(checks):
            last = probe_once(probe, url, host, plan.get("nginx_tls") if host is not None else None)
            failed_in_a_row[number] = 0 if last["ok"] else failed_in_a_row[number] + 1
            if failed_in_a_row[number] >= probe["failures"]:
                # A container Docker reports stopped or unhealthy is the cause to name, when the probes
                # saw it first (a Docker error does not outrank the probe's failure).
                documents = docker_documents(run, plan["project"])
                _stop_at_container_trouble(plan, result, rounds, _container_reason(documents) if documents else None)
                result["gates"].append({"gate": kind, "service": service["name"], "passed": False, "rounds": rounds})
                last = {**last, "reason": f"{last['reason']} ({failed_in_a_row[number]} failures in a row)"}
                raise WatchFailed(probe_failure(plan, kind, service, probe, url, failed_in_a_row[number], last))
        # Rounds start every ``pause`` seconds, however long Docker took to answer.
        sleep(max(0.0, pause - (clock() - round_started)))
    result["gates"].append({"gate": "watch", "passed": True, "rounds": rounds, "seconds": seconds})


def _stop_at_container_trouble(plan, result, rounds, reason):
    """Raise the watch gate's WatchFailed for a reason the new color's containers cannot serve."""
    if reason:
        result["gates"].append({"gate": "watch", "passed": False, "rounds": rounds})
        raise WatchFailed({"gate": "watch", "service": plan["project"], "color": plan["color"], "reason": reason})


def docker_documents(run, project):
    try:
        return docker.containers(run, project)
    except docker.DockerError:
        return []


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


def nginx_refusal(plan, dump, rc, out, err):
    """Why the ``nginx -T`` dump does not let the markers switch the plan's upstreams, or None: nginx must
    read every upstream file, define the color's groups and test every marker."""
    settings = plan["settings"]
    command = " ".join(dump)
    if rc != 0:
        return f"`{command}` failed: {(err or out).strip()[-500:]}"
    read = {os.path.realpath(path) for path in upstreams.dumped_files(out)}
    unread = [item["path"] for item in plan["upstreams"] if os.path.realpath(item["path"]) not in read]
    if unread:
        return (
            f"`{command}` shows nginx does not read {', '.join(unread)}; upstreams_dir={settings['upstreams_dir']!r} "
            "must be the directory nginx includes (the nginx role's upstreams directory)"
        )
    groups = upstreams.dumped_upstreams(out)
    missing = [item["group"] for item in plan["upstreams"] if item["group"] not in groups]
    if missing:
        return f"`{command}` shows no upstream group {', '.join(missing)}"
    untested = [
        path for item in plan["upstreams"] for path in item["markers"] if not upstreams.dump_tests_marker(out, path)
    ]
    if untested:
        return (
            f"`{command}` shows no server that tests the color markers {', '.join(untested)} (if (-f ...)): the sites "
            "that proxy to these upstreams must choose the group by its markers, as the berth.stack.nginx role's "
            "site template does"
        )
    return None


def prepare_nginx(plan, run):
    """Before the new color starts: write the upstream files whose groups changed, check that nginx accepts
    them (``nginx -t``), reads them, defines the color's groups and tests its markers (``nginx -T``), and
    reload when a file changed. No marker moves, so traffic stays where it is; on a refusal the previous
    files come back."""
    settings = plan["settings"]
    changed = any(item["changed"] for item in plan["upstreams"])
    write_upstreams(plan)
    rc, message = nginx_command(run, settings["nginx_test_command"])
    if rc != 0:
        restore_upstreams(plan)
        raise RolloutFailed(f"nginx -t refused the new upstream files, previous files restored: {message}")
    dump = plan["nginx_dump_command"]
    if dump:
        rc, out, err = run(dump)
        why = nginx_refusal(plan, dump, rc, out, err)
        if why:
            restore_upstreams(plan)
            raise RolloutFailed(f"{why}; previous files restored, traffic untouched")
        plan["nginx_tls"] = nginx_tls(plan, out)
    else:
        plan["nginx_tls"] = nginx_tls(plan, None)
    if changed:
        rc, message = nginx_command(run, settings["nginx_reload_command"])
        if rc != 0:
            restore_upstreams(plan)
            nginx_command(run, settings["nginx_reload_command"])
            raise RolloutFailed(f"nginx reload failed, previous upstream files restored: {message}")


def check_switch(plan, run):
    """Right before the last recheck of the new color, and so milliseconds before the switch: ``nginx -T``
    shows once more that nginx defines the color's groups and tests its markers (a site changed since the
    rollout began could have stopped doing so)."""
    dump = plan["nginx_dump_command"]
    if dump:
        rc, out, err = run(dump)
        why = nginx_refusal(plan, dump, rc, out, err)
        if why:
            raise RolloutFailed(f"{why}; traffic untouched")


def switch_markers(plan):
    """The switch: the markers move (written aside, renamed into place, the other color's removed). No
    reload: every request after the rename goes to the new color, on any connection."""
    try:
        upstreams.set_markers(markers(plan, "after"))
    except OSError as exc:
        # Some markers may have moved: all go back before the new color is stopped.
        upstreams.set_markers(markers(plan, "before"))
        raise RolloutFailed(f"the color markers could not be moved ({exc}); previous markers restored") from exc


def markers(plan, which):
    """Each marker the switch changes -> its content ``before`` or ``after`` the switch (None: absent)."""
    return {
        path: marker[which]
        for item in plan["upstreams"]
        for path, marker in item["markers"].items()
        if marker["before"] != marker["after"]
    }


def nginx_tls(plan, dump):
    """How the probes through an https nginx_url verify nginx: SNI and name from nginx_host_header, the
    certificate against nginx_ca_file, else against the certificate of the server nginx -T shows for that
    name (the site's own), else (no dump) the system CAs. None for http. Restores the upstream files and
    raises, before any reload, when the dump has no TLS server for the name: the probes could not reach
    the site."""
    settings = plan["settings"]
    if not (settings["nginx_url"] or "").startswith("https://"):
        return None
    name = settings["nginx_host_header"]
    ca_file = settings["nginx_ca_file"]
    if not ca_file and dump is not None:
        ca_file = upstreams.site_certificate(dump, name)
        if ca_file is None:
            restore_upstreams(plan)
            raise RolloutFailed(
                f"nginx_url={settings['nginx_url']!r}: `nginx -T` shows no server that listens with ssl and has "
                f"server_name {name} (nginx_host_header), so the probes through nginx could not verify the site; "
                "previous files restored, traffic untouched"
            )
    return {"server_name": name, "ca_file": ca_file}


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
            remember(plan)
        except OSError as exc:
            raise RolloutFailed(
                f"nginx routes to color {plan['color']} (release {plan['release']}), but {plan['state_path']} could "
                f"not be written: {exc}; the next rollout reads the live color from the color markers"
            ) from exc
    result.update(pruned_releases=pruned, history=state["releases"])


def keeper_name(app, release, service):
    return f"{app}-keep-{release}-{service}"


def keep_images(run, app, releases):
    """Keep the images of every recorded release on the host: one created, never started container per
    release and service (``<app>-keep-<release>-<service>``, label berth.keep.app), created from the
    image reference the release's compose file names, holds the image and that reference, so
    ``docker image prune --all`` (the docker_host prune timer's) leaves what a rollback to any recorded
    release needs. Keepers of releases no longer recorded are removed. Returns warnings: the release
    already serves, so a keeper that cannot be made never fails the rollout."""
    wanted = {
        keeper_name(app, entry["release"], service): (entry["release"], record["image"])
        for entry in releases
        for service, record in (entry.get("images") or {}).items()
        if record.get("image")
    }
    try:
        existing = docker.keepers(run, app)
        stale = [name for name, image in existing.items() if name not in wanted or wanted[name][1] != image]
        if stale:
            docker.remove_containers(run, stale)
        for name, (release, image) in wanted.items():
            if name not in existing or name in stale:
                docker.create_keeper(run, app, release, name, image)
    except docker.DockerError as exc:
        return [f"the images of the recorded releases may not all be kept from a prune: {exc}"]
    return []


def stop_quietly(run, project, timeout):
    """Stop a color on the way out of a failure; a failure to stop must not hide the first error."""
    with contextlib.suppress(docker.DockerError):
        docker.compose_stop(run, project, timeout)


def unwind(plan, run, message, exc):
    """The one way out of a failed step: stop the new color unless it served already, then raise."""
    if plan["color"] != plan["previous"]["color"]:
        stop_quietly(run, plan["project"], plan["settings"]["stop_timeout"])
    raise RolloutFailed(message, **getattr(exc, "details", {})) from exc


def switch_back(plan, run, result, exc, explain=None):
    """After a failed probe through nginx: the previous color markers back (no reload), or, when they
    cannot be put back, the new color kept serving and recorded. With nothing behind nginx there is
    nothing to switch: the new color is stopped, the old one never stopped running. ``explain()`` builds
    the failure after the switch back, so that gathering logs does not keep traffic on a failing color."""
    if not plan["upstreams"]:
        exc = explain() if explain else exc
        unwind(plan, run, f"rollout of {plan['release']} failed, the previous color keeps running: {exc}", exc)
    failure = None
    try:
        with timed(result, "switch_back"):
            upstreams.set_markers(markers(plan, "before"))
    except OSError as error:
        failure = error
    if failure is None:
        exc = explain() if explain else exc
        unwind(plan, run, f"rollout of {plan['release']} switched back to the previous upstreams: {exc}", exc)
    # The markers could not be put back, so nginx may still send traffic to the new color: keep that
    # color running, and make the markers and state.json say so too.
    with contextlib.suppress(OSError):
        upstreams.set_markers(markers(plan, "after"))
    exc = explain() if explain else exc
    record(plan, result)
    raise RolloutFailed(
        f"rollout of {plan['release']} failed through nginx and switching back failed (color markers: {failure}): "
        f"traffic is still on color {plan['color']} (release {plan['release']}), which keeps running and is "
        f"recorded as active; the color markers point at it. {exc}",
        **exc.details,
    ) from exc


def apply(plan, run, result, quiet_run=None):
    """Carry ``plan`` out; ``result`` receives gates, timings, images, history and pruned releases as they
    happen. ``quiet_run`` (default ``run``) runs the watch window's many Docker commands untraced."""
    release = plan["release"]
    if plan["upstreams"]:
        with timed(result, "nginx_prepare"):
            try:
                prepare_nginx(plan, run)
            except RolloutFailed as exc:
                unwind(plan, run, f"rollout of {release}: {exc}", exc)
    with timed(result, "start_and_gate"):
        try:
            start_and_gate(plan, run, result["gates"])
            result["images"] = release_images(run, plan["project"])
            if plan["upstreams"]:
                with timed(result, "switch_check"):
                    check_switch(plan, run)
            # The last gate: from its end to the markers in place is the switch.
            recheck_before_switch(plan, run, result["gates"])
        except (RolloutFailed, docker.DockerError) as exc:
            unwind(plan, run, f"rollout of {release} stopped before the switch, traffic untouched: {exc}", exc)
    with timed(result, "switch"):
        try:
            if plan["upstreams"]:
                switch_markers(plan)
        except RolloutFailed as exc:
            unwind(plan, run, f"rollout of {release}: {exc}", exc)
    switched_at = time.monotonic()
    old = plan["previous"]["color"]
    try:
        with timed(result, "nginx_probe"):
            probe_through_nginx(plan, run, result["gates"])
        # Nothing to go back to when the release restarts in its own color: no window then.
        if old != plan["color"] and plan["settings"]["watch_seconds"] > 0:
            with timed(result, "watch"):
                watch(plan, quiet_run or run, result)
    except RolloutFailed as exc:
        switch_back(plan, run, result, exc)
    except WatchFailed as failure:
        gate = failure.gate

        def explain():
            # A container failure concerns the whole color: every container's logs, not one service's.
            documents = docker_documents(run, plan["project"]) if "reason" in gate else None
            if "reason" not in gate:
                # Probes failing because the container stopped between two Docker checks: say so.
                cause = container_trouble(run, plan["project"], gate["service"])
                if cause:
                    gate["cause"] = cause
            return explained(plan, run, gate, documents)

        switch_back(plan, run, result, failure, explain)
    # The old color ran all along: recorded as serving only now, after the window.
    record(plan, result)
    if old and old != plan["color"]:
        with timed(result, "drain"):
            time.sleep(max(0.0, plan["settings"]["drain_seconds"] - (time.monotonic() - switched_at)))
        old_project = f"{plan['app']}-{old}"
        with timed(result, "stop_old"):
            try:
                docker.compose_stop(run, old_project, plan["settings"]["stop_timeout"])
            except docker.DockerError as exc:
                raise RolloutFailed(
                    f"release {release} serves on color {plan['color']} and is recorded as active, "
                    f"but stopping the old color {old_project} failed: {exc}"
                ) from exc
    with timed(result, "keep_images"):
        result["warnings"] = keep_images(run, plan["app"], plan["state"]["releases"])


def outcome(plan, run, result, quiet_run=None):
    """``apply()``'s result as the module returns it, a failure included (``failed`` and ``msg``)."""
    try:
        apply(plan, run, result, quiet_run)
    except RolloutFailed as exc:
        result.update(failed=True, msg=str(exc), **exc.details)
    except docker.DockerError as exc:
        result.update(failed=True, msg=f"rollout of {plan['release']}: {exc}")
    return result
