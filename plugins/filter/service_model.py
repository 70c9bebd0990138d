# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The service model (plugins/module_utils/_service_model.py) for the compose_app role's templates and
preflight, so the role and the compose_rollout module check and name services by the same rules.
Documentation: the sidecar files beside this one (service_errors.yml, ...)."""

from __future__ import annotations

from collections.abc import Mapping

from ansible_collections.berth.stack.plugins.module_utils import _service_model as model


def _plain(value):
    """``value`` as plain dicts and lists. The rules validate with ArgumentSpecValidator, which deep-copies its
    input; a deep copy of ansible-core's lazy containers copies the templating context too (~0.5 s a call)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def service_errors(services, app, variable="compose_app_services"):
    return model.service_errors(app, _plain(services), variable)


def secret_files(services):
    return model.secret_files(_plain(services))


def release_errors(app, release, keep_releases):
    return model.release_errors(
        app, release, keep_releases, ("compose_app_name", "compose_app_release", "compose_app_keep_releases")
    )


def data_service_errors(services, variable="compose_app_data_services"):
    return model.data_service_errors(_plain(services), variable)


class FilterModule:
    def filters(self):
        return {
            "service_errors": service_errors,
            "data_service_errors": data_service_errors,
            "release_errors": release_errors,
            "port_variable": model.port_variable,
            "compose_environment": model.compose_environment,
            "secret_files": secret_files,
            "listed_reference": model.listed_reference,
        }
