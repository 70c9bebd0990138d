# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""compose_rollout's plan: what a rollout would do, computed from its parameters and what was observed
on the host, without touching the host.

``plan_rollout(params, observed)`` is pure: ``observed`` holds the app's state.json, the current
content of each upstream file (read once, by path), the digest of the release's files and Compose's
order of the services. The plan says which color serves and which one starts, the order, every
upstream file's new content and whether it changes (a reload before the new color starts), the
color markers that switch traffic (no reload), the diff and the steps; check mode returns it,
``_rollout_apply.apply()`` carries it out.
"""

from __future__ import annotations

import os
import re

from ansible_collections.berth.stack.plugins.module_utils import _health as health
from ansible_collections.berth.stack.plugins.module_utils import _nginx_upstream as upstreams
from ansible_collections.berth.stack.plugins.module_utils import _release_state as states
from ansible_collections.berth.stack.plugins.module_utils import _service_model as model

ARGUMENT_SPEC = {
    "app": {"type": "str", "required": True},
    "release": {"type": "str", "required": True},
    "release_dir": {"type": "path", "required": True},
    "compose_file": {"type": "str", "default": "compose.yaml"},
    "state_dir": {"type": "path"},
    "services": {"type": "list", "elements": "dict", "required": True, "options": model.SERVICE_SPEC},
    "upstreams_dir": {"type": "path", "default": "/etc/nginx/berth/upstreams"},
    "upstream_keepalive": {"type": "int", "default": 16},
    "nginx_url": {"type": "str", "default": "http://127.0.0.1"},
    "nginx_host_header": {"type": "str"},
    "nginx_ca_file": {"type": "path"},
    "nginx_test_command": {"type": "list", "elements": "str", "default": ["nginx", "-t", "-q"]},
    "nginx_reload_command": {"type": "list", "elements": "str", "default": ["systemctl", "reload", "nginx"]},
    "drain_seconds": {"type": "float", "default": 5},
    "watch_seconds": {"type": "float", "default": 30},
    "lock_dir": {"type": "path"},
    "heartbeat_timeout": {"type": "float", "default": 15},
    "stop_timeout": {"type": "int", "default": 10},
    "keep_releases": {"type": "int", "default": 5},
    "fingerprint": {"type": "str"},
    "check_unchanged": {"type": "bool", "default": False},
    "data_services": {"type": "list", "elements": "str", "default": []},
}


class PlanError(ValueError):
    """The parameters and what is on the host do not make a rollout (for example a service compose lacks)."""


def validation_errors(params):
    """Every problem with the parameters, each naming the option and the bad value."""
    errors = model.release_errors(params["app"], params["release"], params["keep_releases"])
    if not params["check_unchanged"] and not os.path.isfile(compose_path(params)):
        errors.append(f"release_dir={params['release_dir']!r}: holds no compose file {params['compose_file']!r}")
    for key in ("watch_seconds", "drain_seconds"):
        if params[key] < 0:
            errors.append(f"{key}={params[key]:g}: must be at least 0")
    if params["heartbeat_timeout"] <= 0:
        errors.append(f"heartbeat_timeout={params['heartbeat_timeout']:g}: must be more than 0")
    # check_unchanged asks whether a deploy would take the lock (and reads nothing from the release).
    if params["check_unchanged"]:
        return errors + model.service_errors(params["app"], params["services"], "services")
    if params["lock_dir"] and not os.path.isdir(params["lock_dir"]):
        errors.append(f"lock_dir={params['lock_dir']!r}: no such directory (the caller takes the lock first)")
    if params["nginx_url"] and not re.match(r"^https?://[^/]+$", params["nginx_url"]):
        errors.append(f"nginx_url={params['nginx_url']!r}: give scheme and host only, e.g. http://127.0.0.1")
    if (params["nginx_url"] or "").startswith("https://") and not params["nginx_host_header"]:
        errors.append(
            f"nginx_url={params['nginx_url']!r}: an https URL needs nginx_host_header, the site's server name the "
            "probes send as SNI and Host and verify the certificate for"
        )
    if params["nginx_ca_file"] and not os.path.isfile(params["nginx_ca_file"]):
        errors.append(f"nginx_ca_file={params['nginx_ca_file']!r}: no such file on the host")
    return errors + model.service_errors(params["app"], params["services"], "services")


def uses_expressions(params):
    return any(probe["expect"] for service in params["services"] for probe in service["probes"])


def compose_path(params):
    return os.path.join(params["release_dir"], params["compose_file"])


def state_path(params):
    return os.path.join(params["state_dir"] or f"/srv/berth/{params['app']}", "state.json")


def listed_services(params):
    """The listed services with their defaults and default upstreams, each probe's expression compiled once."""
    services = []
    for raw in params["services"]:
        service = model.with_defaults(params["app"], raw)
        service["probes"] = [
            {**probe, "expression": health.compile_expression(probe["expect"]) if probe["expect"] else None}
            for probe in service["probes"]
        ]
        services.append(service)
    return services


def upstream_paths(services, upstreams_dir):
    """The files the rollout reads and writes for each service (with its defaults) behind nginx: its
    upstream file and its color markers."""
    paths = []
    for service in services:
        if service["upstream"]:
            paths.append(upstreams.upstream_path(upstreams_dir, service["upstream"]))
            paths += [upstreams.marker_path(upstreams_dir, service["upstream"], c) for c in upstreams.MARKER_ORDER]
    return paths


def nginx_dump_command(test_command):
    """The nginx test command with -T (test and dump) in place of -t, or None when it has no -t."""
    if "-t" not in test_command:
        return None
    return ["-T" if arg == "-t" else arg for arg in test_command]


def _markers(upstreams_dir, name, files):
    """color -> the content of upstream ``name``'s marker of that color (None: absent)."""
    return {color: files.get(upstreams.marker_path(upstreams_dir, name, color)) for color in states.COLORS}


def _serving_color(service, upstreams_dir, files):
    """The color nginx sends the service's upstream to, by its markers and the group they select; for a
    file without markers (a placeholder, or written before markers existed), by the ports of its one
    group. None when that group holds neither color's ports."""
    name = service["upstream"]
    content = files.get(upstreams.upstream_path(upstreams_dir, name))
    selected = upstreams.selected_color(_markers(upstreams_dir, name, files))
    group = upstreams.group_name(name, selected) if selected else name
    ports = upstreams.upstream_ports(upstreams.upstream_blocks(content).get(group))
    if selected:
        return selected if ports and ports[0] == service["ports"][selected] else None
    matching = [color for color in states.COLORS if ports and ports[0] == service["ports"][color]]
    return matching[0] if matching else None


def _live_color_of_upstreams(services, files, upstreams_dir):
    """The color all upstreams are sent to, or None when they do not agree."""
    colors = {_serving_color(service, upstreams_dir, files) for service in services if service["upstream"]}
    return colors.pop() if len(colors) == 1 else None


def _previous(params, services, observed, warnings):
    """The color (and release) serving now: nginx is the truth, state.json lags it when a rollout was
    interrupted between its switch and its record."""
    state = observed["state"]
    live = _live_color_of_upstreams(services, observed["upstream_files"], params["upstreams_dir"])
    if live and live != states.active_color(state):
        warnings.append(
            f"the color markers and upstream files in {params['upstreams_dir']} send traffic to color {live} but "
            f"{state_path(params)} names {states.active_color(state)}: {live} is taken as live (an earlier rollout "
            "stopped after its switch)"
        )
        return {"color": live, "release": None}
    return {"color": states.active_color(state), "release": states.active_release(state)}


def _order(services, compose_services, compose_file):
    listed = [service["name"] for service in services]
    unknown = [name for name in listed if name not in compose_services]
    if unknown:
        raise PlanError(f"services: {', '.join(unknown)} not in {compose_file} (it has {', '.join(compose_services)})")
    return listed + [name for name in compose_services if name not in listed]


def _upstream_content(params, service, color, before):
    """The upstream file that lets nginx send ``service``'s upstream to ``color``: the block nginx uses
    without a marker, kept as it is; ``color``'s group from its ports; the other color's group as it is
    (it serves that color's running containers, or has been written for them) or from its ports."""
    name = service["upstream"]
    blocks = upstreams.upstream_blocks(before)
    # Without a marker nginx uses the block named like the upstream: kept while there is one.
    groups = [blocks[name]] if name in blocks else []
    for each in states.COLORS:
        group = upstreams.group_name(name, each)
        if each == color or group not in blocks:
            keepalive = params["upstream_keepalive"]
            groups.append(upstreams.render_upstream(group, model.service_ports(service, each), keepalive))
        else:
            groups.append(blocks[group])
    comment = (
        f"Managed by berth.stack.compose_rollout: app {params['app']}. One group per color; nginx sends {name} to\n"
        f"{name}__<color> while the marker {name}.<color> exists beside this file (green first), else to {name}."
    )
    return upstreams.render_upstream_file(groups, comment)


def _upstreams(params, services, color, files):
    """Per upstream: its file (path, content, what it holds now, changed), and the markers that send it to
    ``color`` (marker paths -> content now and wanted, None for absent; switch when they differ)."""
    planned = []
    for service in services:
        if not service["upstream"]:
            continue
        name = service["upstream"]
        path = upstreams.upstream_path(params["upstreams_dir"], name)
        before = files.get(path)
        content = _upstream_content(params, service, color, before)
        markers_before = _markers(params["upstreams_dir"], name, files)
        markers = {
            upstreams.marker_path(params["upstreams_dir"], name, each): {
                "before": markers_before[each],
                "after": upstreams.marker_content(name, each, params["app"]) if each == color else None,
            }
            for each in states.COLORS
        }
        planned.append(
            {
                "name": name,
                "group": upstreams.group_name(name, color),
                "path": path,
                "ports": model.service_ports(service, color),
                "content": content,
                "before": before,
                "changed": before != content,
                "selected": upstreams.selected_color(markers_before),
                "markers": markers,
                "switch": any(marker["before"] != marker["after"] for marker in markers.values()),
            }
        )
    return planned


def _steps(params, plan):
    changed = [item["name"] for item in plan["upstreams"] if item["changed"]]
    switched = [item["name"] for item in plan["upstreams"] if item["switch"]]
    dump = ", nginx -T" if plan["nginx_dump_command"] else ""
    steps = []
    if not plan["upstreams"]:
        steps.append("no service behind nginx: nginx untouched")
    elif changed:
        steps.append(f"write the upstream groups of {', '.join(changed)}, traffic not moved (nginx -t{dump}, reload)")
    else:
        steps.append(f"upstream groups unchanged, no reload (nginx -t{dump})")
    steps.append(f"start and gate {plan['project']}: {', '.join(plan['order'])}")
    if plan["upstreams"]:
        steps.append(
            f"switch {', '.join(switched) or 'nothing'} to {plan['color']} by the color markers"
            + (f" ({'nginx -T, ' if dump else ''}rename; no reload)" if switched else ", markers unchanged")
        )
    if params["nginx_url"] and plan["upstreams"]:
        steps.append(f"probe through nginx at {params['nginx_url']}")
    live = plan["previous"]["color"]
    if live != plan["color"] and params["watch_seconds"] > 0:
        keeping = f", {params['app']}-{live} kept running" if live else ""
        steps.append(f"watch {plan['project']} for {params['watch_seconds']:g} s{keeping}; switch back at a failure")
    steps.append(f"record {params['release']} as active in {plan['state_path']}")
    if live and live != plan["color"]:
        steps.append(
            f"drain (at least {params['drain_seconds']:g} s after the switch), then stop {params['app']}-{live}"
        )
    return steps


def plan_rollout(params, observed):
    """The rollout of ``params`` (validated module parameters) given ``observed``:

    ``state`` (state.json as a dict), ``upstream_files`` (path -> content, None for a missing file: every
    path upstream_paths() names, upstream files and color markers),
    ``release_sha256`` (the release's compose, env and secret files) and ``compose_services`` (compose's order).
    ``serving`` is True when the release already serves by state and files; whether its containers
    still run is for the caller to ask Docker.
    """
    listed = listed_services(params)
    warnings = []
    previous = _previous(params, listed, observed, warnings)
    # A recorded release is immutable: its files must still be what was recorded (a rollback uses
    # them as they were), and a change goes out under a new release id.
    recorded = states.find_release(observed["state"], params["release"]) or {}
    if recorded.get("release_sha256") not in (None, observed["release_sha256"]):
        raise PlanError(
            f"release={params['release']!r} is recorded in {state_path(params)} with release_sha256 "
            f"{recorded['release_sha256']}, but release_dir={params['release_dir']!r} (its compose, env and secret "
            f"files) now has {observed['release_sha256']}: a recorded release is never changed; deploy the change "
            "under a new release id, or restore the release directory before rolling back to it"
        )
    same_release = previous["release"] == params["release"] and bool(previous["color"])
    color = previous["color"] if same_release else states.next_color(previous["color"])
    order = _order(listed, observed["compose_services"], compose_path(params))
    by_name = {service["name"]: service for service in listed}
    plan = {
        "app": params["app"],
        "release": params["release"],
        "release_dir": params["release_dir"],
        "compose_file": compose_path(params),
        "state_path": state_path(params),
        "state": observed["state"],
        "release_sha256": observed["release_sha256"],
        "fingerprint": params["fingerprint"],
        "previous": previous,
        "warnings": warnings,
        "color": color,
        "project": f"{params['app']}-{color}",
        "order": order,
        "listed": [service["name"] for service in listed],
        "services": [by_name.get(name) or model.with_defaults(params["app"], {"name": name}) for name in order],
        "environment": model.compose_environment(listed, color),
        "upstreams": _upstreams(params, listed, color, observed["upstream_files"]),
        "nginx_dump_command": nginx_dump_command(params["nginx_test_command"]),
        "settings": {
            key: params[key]
            for key in (
                "upstreams_dir",
                "nginx_url",
                "nginx_host_header",
                "nginx_ca_file",
                "nginx_test_command",
                "nginx_reload_command",
                "drain_seconds",
                "watch_seconds",
                "stop_timeout",
                "keep_releases",
            )
        },
    }
    plan["serving"] = same_release and not any(item["changed"] or item["switch"] for item in plan["upstreams"])
    plan["steps"] = _steps(params, plan)
    plan["diff"] = _diff(plan["upstreams"])
    return plan


def _diff(planned):
    """Diff mode's entries: each changed upstream file, then each marker put in place or removed."""
    diff = [
        {
            "before_header": item["path"],
            "after_header": item["path"],
            "before": item["before"] or "",
            "after": item["content"],
        }
        for item in planned
        if item["changed"]
    ]
    return diff + [
        {"before_header": path, "after_header": path, "before": marker["before"] or "", "after": marker["after"] or ""}
        for item in planned
        for path, marker in item["markers"].items()
        if marker["before"] != marker["after"]
    ]


def unchanged_reason(params, observed):
    """Why the deploy of ``params`` has something to do, or None when it has nothing to do by its files.

    ``observed``: ``state`` (state.json), ``fingerprint`` (the last complete deploy's record), ``locked``
    (whether O(lock_dir) exists), ``services`` (with their defaults) and ``upstream_files`` (path -> content).
    Whether the containers run is for the caller to ask Docker.
    """
    release = params["release"]
    if observed["locked"]:
        return f"another deploy holds the lock {params['lock_dir']}"
    if states.active_release(observed["state"]) != release:
        return f"release {release} does not serve yet (serving: {states.active_release(observed['state'])})"
    if not params["fingerprint"] or observed["fingerprint"] != {
        "release": release,
        "fingerprint": params["fingerprint"],
    }:
        return f"the inputs of this deploy differ from those of the last complete deploy of release {release}"
    color = states.active_color(observed["state"])
    planned = _upstreams(params, observed["services"], color, observed["upstream_files"])
    changed = [item["name"] for item in planned if item["changed"]]
    if changed:
        return f"the upstream files of {', '.join(changed)} do not hold the groups of release {release}"
    switched = [item["name"] for item in planned if item["switch"]]
    if switched:
        return f"the color markers of {', '.join(switched)} do not select color {color} of release {release}"
    return None


def public_plan(plan):
    """The plan as the module returns it (RETURN ``plan``)."""
    return {
        "color": plan["color"],
        "project": plan["project"],
        "order": plan["order"],
        "upstreams": [
            {key: item[key] for key in ("name", "group", "path", "ports", "changed", "switch")}
            for item in plan["upstreams"]
        ],
        "steps": plan["steps"],
    }
