# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an app service is, written once: the naming rules, the argument spec of a service as the
compose_app role's ``compose_app_services`` and the compose_rollout module's ``services`` share it,
the checks that refuse a bad one, and the values the compose file receives (``BERTH_PORT_<SERVICE>``).

Plain functions over plain dicts. The role reaches them through the ``berth.stack`` filters
(plugins/filter/service_model.py), the module imports them.
"""

from __future__ import annotations

import re

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible_collections.berth.stack.plugins.module_utils import _health as health
from ansible_collections.berth.stack.plugins.module_utils._release_state import COLORS

APP_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
RELEASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# No "__" and no trailing "_": <upstream>__blue and <upstream>__green are the colors' nginx groups.
UPSTREAM_NAME = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
# The Compose specification's rule for service names (compose-spec, schema "services" patternProperties).
SERVICE_NAME = re.compile(r"^[a-zA-Z0-9._-]+$")
SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The env files hold KEY='value': compose takes a single-quoted value literally except \' for a quote,
# so a backslash right before a quote or at the end cannot be written there.
SECRET_UNWRITABLE = re.compile(r"\\('|$)")
# A secret file's name: its file name under /run/secrets/ in the container and in the release directory.
SECRET_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# The owner of a service's secret files: the service's user, numerically (the host cannot resolve the image's names).
NUMERIC_USER = re.compile(r"^([0-9]+)(?::([0-9]+))?$")

# Docker's reference grammar (distribution/reference): [host[:port]/]path[:tag][@digest]. The first
# component is a registry host only when it has a '.' or a ':' or is localhost, as docker decides.
_HOST_PART = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_REGISTRY = rf"(?:{_HOST_PART}(?:\.{_HOST_PART})+(?::[0-9]+)?|{_HOST_PART}:[0-9]+|localhost)"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_REFERENCE = re.compile(rf"^(?:{_REGISTRY}/)?{_PATH_PART}(?:/{_PATH_PART})*(?::{_TAG})?(?:@{_DIGEST})?$")
IMAGE_NAME_MAX = 255

PROBE_SPEC = {
    "path": {"type": "str", "required": True},
    "method": {"type": "str", "default": "GET"},
    "status": {"type": "int", "default": 200},
    "expect": {"type": "str"},
    "successes": {"type": "int", "default": 3},
    "failures": {"type": "int", "default": 3},
    "interval": {"type": "float", "default": 1},
    "timeout": {"type": "float", "default": 60},
    "request_timeout": {"type": "float", "default": 5},
    "nginx_path": {"type": "str"},
    "headers": {"type": "dict", "default": {}},
}

# One app service, as the compose_app role renders it into the compose file and the rollout gates it.
SERVICE_SPEC = {
    "name": {"type": "str", "required": True},
    "image": {"type": "str"},
    "command": {"type": "list", "elements": "str"},
    "environment": {"type": "dict"},
    "secrets": {"type": "dict", "no_log": True},
    "secret_files": {"type": "dict", "no_log": True},
    "healthcheck": {"type": "dict"},
    "user": {"type": "str"},
    "container_port": {"type": "int"},
    "replicas": {"type": "int", "default": 1},
    "ports": {
        "type": "dict",
        "options": {"blue": {"type": "int", "required": True}, "green": {"type": "int", "required": True}},
    },
    "upstream": {"type": "str"},
    "behind_nginx": {"type": "bool", "default": True},
    "health_timeout": {"type": "float", "default": 120},
    "boot_grace": {"type": "float", "default": 0},
    "probes": {"type": "list", "elements": "dict", "default": [], "options": PROBE_SPEC},
}


def release_errors(app, release, keep_releases, names=("app", "release", "keep_releases")):
    """The app name, the release id and the history length, each as ``<name>=<value>: why``; ``names``
    are the option (or role variable) names the messages use."""
    errors = []
    if not isinstance(app, str) or not APP_NAME.match(app):
        errors.append(f"{names[0]}={app!r}: use lower-case letters, digits and _, starting with a letter")
    if not isinstance(release, str) or not RELEASE_NAME.match(release):
        errors.append(f"{names[1]}={release!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit")
    if not isinstance(keep_releases, int) or keep_releases < 2:
        errors.append(f"{names[2]}={keep_releases!r}: keep at least 2 (the active and the idle color's release)")
    return errors


def port_variable(name):
    """The environment variable that carries a service's host port(s) into the compose file."""
    return "BERTH_PORT_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def default_upstream(app, name):
    """The nginx upstream of a service that sets container_port but no upstream: ``<app>_<name>``."""
    return re.sub(r"[^a-z0-9_]", "_", f"{app}_{name}".lower())


def service_ports(service, color):
    """The host ports of every replica of ``service`` in ``color`` (none when it has no ports)."""
    if not service.get("ports"):
        return []
    first = service["ports"][color]
    return list(range(first, first + (service.get("replicas") or 1)))


def compose_environment(services, color):
    """What the compose file is interpolated with: BERTH_COLOR and each service's BERTH_PORT_<SERVICE>."""
    env = {"BERTH_COLOR": color}
    for service in services:
        ports = service_ports(service, color)
        if ports:
            env[port_variable(service["name"])] = str(ports[0]) if len(ports) == 1 else f"{ports[0]}-{ports[-1]}"
    return env


def secret_files(services):
    """Where each service's secret files go: one entry per file, with the release-relative ``path``, the
    Compose top-level secret ``key``, and the ``owner``/``group`` ids the file belongs to (the service's
    numeric user). Names only: the values stay in the services."""
    files = []
    for index, service in enumerate(services):
        match = NUMERIC_USER.match(str(service.get("user", "")))
        for name in sorted(service.get("secret_files") or {}):
            files.append(
                {
                    "service": service["name"],
                    "name": name,
                    "path": f"secrets/{service['name']}/{name}",
                    # Compose's secret keys are global to the file: the service's position keeps them apart.
                    "key": f"s{index}_{name}",
                    "owner": int(match.group(1)) if match else 0,
                    "group": int(match.group(2) or match.group(1)) if match else 0,
                }
            )
    return files


def implied_upstream(app, service):
    """The nginx upstream a service is served by: its own, else the default one when it listens on a
    container_port and is behind nginx; None for a worker or an internal service (behind_nginx false)."""
    if service.get("upstream") or service.get("behind_nginx") is False:
        return service.get("upstream")
    if service.get("container_port") is not None and isinstance(service.get("name"), str):
        return default_upstream(app, service["name"])
    return None


def with_defaults(app, service):
    """A service as the rollout uses it: the argument spec's defaults, and the default upstream when
    the service listens on a container_port behind nginx but names no upstream."""
    validated = dict(ArgumentSpecValidator(SERVICE_SPEC).validate(dict(service)).validated_parameters)
    validated["upstream"] = implied_upstream(app, validated)
    return validated


def listed_reference(image):
    """``image`` as Docker lists it among an image's RepoTags or RepoDigests: a reference without a tag
    or digest ("postgres", "registry:5000/app") is listed with its implied ":latest"."""
    if "@" in image or ":" in image.rsplit("/", 1)[-1]:
        return image
    return f"{image}:latest"


def image_reference_error(image):
    """Why ``image`` is not a docker image reference, or None when it is one."""
    if not IMAGE_REFERENCE.match(image):
        return "not an image reference ([registry[:port]/]lower-case/path[:tag][@sha256:digest], no spaces)"
    if len(image.split("@")[0].rsplit(":", 1)[0]) > IMAGE_NAME_MAX:
        return f"the repository name is longer than {IMAGE_NAME_MAX} characters"
    return None


def _spec_errors(spec, raw, where):
    """Type errors and unknown keys, from ansible's own argument spec validation. A secret's value is
    never part of a message: the secrets dict's own type error is replaced by a plain one."""
    outcome = ArgumentSpecValidator(spec).validate(dict(raw))
    messages = []
    unknown = sorted(".".join(key) if isinstance(key, tuple) else key for key in outcome.unsupported_parameters)
    if unknown:
        messages.append(f"{where}: unknown key {', '.join(unknown)} (known: {', '.join(sorted(spec))})")
    for error in outcome.errors:
        if type(error).__name__ == "UnsupportedError":
            continue
        message = str(error)
        for key in ("secrets", "secret_files"):
            if f"'{key}'" in message:
                message = f"{key} must be a dict of NAME: value (value not shown)"
        messages.append(f"{where}: {message}")
    return messages, outcome.validated_parameters


def _label(variable, index, service):
    """``variable[name]`` for a service with a valid name, ``variable[index]`` otherwise."""
    name = service.get("name") if isinstance(service, dict) else None
    if isinstance(name, str) and SERVICE_NAME.match(name):
        return f"{variable}[{name}]"
    return f"{variable}[{index}]"


def _name_errors(where, name, seen):
    if not isinstance(name, str):
        return []
    errors = []
    if not SERVICE_NAME.match(name):
        errors.append(f"{where}.name={name!r}: must match {SERVICE_NAME.pattern} (Compose's rule for service names)")
    if name in seen:
        errors.append(f"{where}.name={name!r}: listed twice")
    seen.add(name)
    return errors


def _image_errors(where, image):
    why = image_reference_error(image) if isinstance(image, str) else None
    return [f"{where}.image={image!r}: {why}"] if why else []


def _secret_errors(where, secrets):
    errors = []
    for key, value in (secrets if isinstance(secrets, dict) else {}).items():
        if not SECRET_NAME.match(str(key)):
            errors.append(f"{where}.secrets.{key}: the name must match {SECRET_NAME.pattern}")
        elif SECRET_UNWRITABLE.search(str(value)):
            errors.append(
                f"{where}.secrets.{key}: the value has a backslash right before a single quote or at its end, "
                "which compose's env files cannot hold (value not shown)"
            )
    return errors


def _secret_file_errors(where, service):
    """Secret files need a file name each, and the service's user as numbers to own them (mode 0400)."""
    names = service.get("secret_files")
    if not isinstance(names, dict) or not names:
        return []
    errors = [
        f"{where}.secret_files.{key}: the name must match {SECRET_FILE_NAME.pattern} (a file name under /run/secrets)"
        for key in names
        if not SECRET_FILE_NAME.match(str(key))
    ]
    if not NUMERIC_USER.match(str(service.get("user", ""))):
        errors.append(
            f"{where}.user={service.get('user')!r}: secret_files need the user the service runs as, as UID or "
            "UID:GID (for example '10001'), so that the files (mode 0400) belong to it"
        )
    return errors


def _port_range_error(where, key, port):
    if isinstance(port, int) and not 1 <= port <= 65535:
        return [f"{where}.{key}={port}: out of range 1-65535"]
    return []


def _host_port_errors(where, service, taken):
    """The ports of every replica in both colors: in range, and used by no other service or color."""
    if not isinstance(service.get("ports"), dict) or not isinstance(service.get("replicas"), int):
        return []
    errors = []
    for color in COLORS:
        first = service["ports"].get(color)
        if not isinstance(first, int) or service["replicas"] < 1:
            continue
        ports = range(first, first + service["replicas"])
        if first < 1 or ports[-1] > 65535:
            last = f" (its replica {service['replicas']} on {ports[-1]})" if ports[-1] > 65535 >= first else ""
            errors.append(f"{where}.ports.{color}={first}: out of range 1-65535{last}")
        if taken & set(ports):
            errors.append(f"{where}.ports.{color}={first}: overlaps another service's or color's ports")
        taken.update(ports)
    return errors


def _probe_errors(where, probes):
    errors = []
    for number, probe in enumerate(probes if isinstance(probes, list) else []):
        if not isinstance(probe, dict):
            continue
        at = f"{where}.probes[{number}]"
        if isinstance(probe.get("path"), str) and not probe["path"].startswith("/"):
            errors.append(f"{at}.path={probe['path']!r}: must start with /")
        for key in ("successes", "failures"):
            if isinstance(probe.get(key), int) and probe[key] < 1:
                errors.append(f"{at}.{key}={probe[key]}: must be at least 1")
        if isinstance(probe.get("expect"), str) and health.HAS_JMESPATH:
            try:
                health.compile_expression(probe["expect"])
            except ValueError as exc:
                errors.append(f"{at}.expect: {exc}")
    return errors


def _services_errors(services, variable, spec, check):
    """The checks every kind of service shares, then ``check(where, service)`` for each one. ``spec``
    None: the caller validated the types already (the role's argument_specs, for data services)."""
    if not isinstance(services, list):
        return [f"{variable}: must be a list of services, got {type(services).__name__}"]
    errors, names = [], set()
    for index, raw in enumerate(services):
        where = _label(variable, index, raw)
        if not isinstance(raw, dict):
            errors.append(f"{where}: must be a dict, got {type(raw).__name__}")
            continue
        service = raw
        if spec is not None:
            spec_errors, service = _spec_errors(spec, raw, where)
            errors += spec_errors
        errors += _name_errors(where, service.get("name"), names)
        errors += _image_errors(where, service.get("image"))
        errors += _secret_errors(where, service.get("secrets"))
        errors += check(where, service)
    return errors


def service_errors(app, services, variable="services"):
    """Every problem with an app's blue/green services, each as ``<variable>[<service>].<key>=<value>: why``."""
    taken, upstreams = set(), set()

    def check(where, service):
        errors = _port_range_error(where, "container_port", service.get("container_port"))
        grace, timeout = service.get("boot_grace"), service.get("health_timeout")
        if isinstance(grace, (int, float)) and not 0 <= grace < (timeout if isinstance(timeout, (int, float)) else 120):
            errors.append(
                f"{where}.boot_grace={grace:g}: must be at least 0 and below health_timeout "
                f"({timeout if timeout is not None else 120:g}), or the gate would give up inside the grace"
            )
        replicas = service.get("replicas")
        if isinstance(replicas, int) and replicas < 1:
            errors.append(f"{where}.replicas={replicas}: must be at least 1")
        needs_ports = [key for key in ("container_port", "upstream", "probes") if service.get(key)]
        if needs_ports and not service.get("ports"):
            errors.append(f"{where}.ports: required (blue and green host ports) with {', '.join(needs_ports)}")
        errors += _host_port_errors(where, service, taken)
        upstream = implied_upstream(app, service)
        if upstream is not None and service.get("behind_nginx") is False:
            errors.append(
                f"{where}.upstream={upstream!r}: a service with behind_nginx false has no upstream "
                "(drop one of the two)"
            )
        if isinstance(upstream, str):
            if not UPSTREAM_NAME.match(upstream):
                errors.append(f"{where}.upstream={upstream!r}: must match {UPSTREAM_NAME.pattern}")
            if upstream in upstreams:
                errors.append(f"{where}.upstream={upstream!r}: used by two services")
            upstreams.add(upstream)
        return errors + _secret_file_errors(where, service) + _probe_errors(where, service.get("probes"))

    return _services_errors(services, variable, SERVICE_SPEC, check)


def data_service_errors(services, variable="compose_app_data_services"):
    """Every problem with an app's long-lived data services, in the same form as service_errors()."""

    def check(where, service):
        errors = []
        for key in ("container_port", "published_port"):
            errors += _port_range_error(where, key, service.get(key))
        if service.get("published_port") is not None and service.get("container_port") is None:
            errors.append(
                f"{where}.published_port={service['published_port']}: needs container_port "
                "(published on 127.0.0.1 only)"
            )
        return errors

    return _services_errors(services, variable, None, check)
