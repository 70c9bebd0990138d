# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The docker and docker compose CLI, as the rollout uses them.

Every function takes ``run``: a callable ``run(argv, env=None) -> (rc, stdout, stderr)``
(``AnsibleModule.run_command`` adapted by ``module_runner()``), so the same code runs in a module
and in tests against the real engine. Failures raise DockerError carrying the command and its
output; callers decide what to tell the user.
"""

from __future__ import annotations

import json
import os

COMPOSE_LABEL_PROJECT = "com.docker.compose.project"
COMPOSE_LABEL_SERVICE = "com.docker.compose.service"
COMPOSE_LABEL_ONEOFF = "com.docker.compose.oneoff"
# A keeper: a created, never started container that holds one image of a recorded release.
KEEP_LABEL_APP = "berth.keep.app"
KEEP_LABEL_RELEASE = "berth.keep.release"


class DockerError(Exception):
    def __init__(self, argv, rc, stdout, stderr):
        self.argv, self.rc, self.stdout, self.stderr = list(argv), rc, stdout, stderr
        detail = (stderr or stdout or "").strip().splitlines()[-5:]
        super().__init__(f"`{' '.join(self.argv)}` failed with exit code {rc}: {' / '.join(detail)}")


def module_runner(module):
    """Adapt AnsibleModule.run_command to the ``run`` callable used here."""

    def run(argv, env=None):
        return module.run_command(list(argv), environ_update=env or {})

    return run


def check(run, argv, env=None):
    rc, out, err = run(argv, env=env)
    if rc != 0:
        raise DockerError(argv, rc, out, err)
    return out


def compose_argv(project, compose_file, *args):
    return ["docker", "compose", "--project-name", project, "--file", compose_file, *args]


def compose_services(run, compose_file, env=None):
    """Service names of a compose file, as compose itself resolves them (validates the file)."""
    out = check(run, ["docker", "compose", "--file", compose_file, "config", "--services"], env=env)
    return [line.strip() for line in out.splitlines() if line.strip()]


def compose_input_files(run, compose_file):
    """Absolute paths of the files a compose file's services read besides it: env files (``env_file:``)
    and secret files (top-level ``secrets:`` with ``file:``), sorted.

    ``--no-interpolate`` keeps env files as entries instead of merging their values into ``environment``,
    so no secret value passes through here.
    """
    out = check(run, ["docker", "compose", "--file", compose_file, "config", "--format", "json", "--no-interpolate"])
    config = json.loads(out)
    base = os.path.dirname(os.path.abspath(compose_file))
    paths = set()
    for service in (config.get("services") or {}).values():
        entries = service.get("env_file") or []
        for entry in [entries] if isinstance(entries, (str, dict)) else entries:
            path = entry.get("path") if isinstance(entry, dict) else entry
            if path:
                paths.add(os.path.normpath(os.path.join(base, path)))
    for secret in (config.get("secrets") or {}).values():
        if secret.get("file"):
            paths.add(os.path.normpath(os.path.join(base, secret["file"])))
    return sorted(paths)


def compose_up(run, project, compose_file, services, env=None, remove_orphans=False):
    argv = compose_argv(project, compose_file, "up", "--detach", "--no-deps", "--pull", "never")
    if remove_orphans:
        argv.append("--remove-orphans")
    return check(run, [*argv, *services], env=env)


def compose_stop(run, project, timeout):
    """Stop a project's containers, keeping them (and their logs) for an instant restart."""
    return check(run, ["docker", "compose", "--project-name", project, "stop", "--timeout", str(timeout)])


def containers(run, project, service=None):
    """``docker inspect`` documents of a project's (or one service's) containers, one-offs excluded."""
    argv = ["docker", "ps", "--all", "--quiet", "--no-trunc", "--filter", f"label={COMPOSE_LABEL_PROJECT}={project}"]
    if service is not None:
        argv += ["--filter", f"label={COMPOSE_LABEL_SERVICE}={service}"]
    ids = check(run, argv).split()
    if not ids:
        return []
    documents = json.loads(check(run, ["docker", "inspect", *ids]))
    return [doc for doc in documents if doc["Config"]["Labels"].get(COMPOSE_LABEL_ONEOFF, "False") != "True"]


def container_state(document):
    """(state, health): state as Docker names it (running, exited...), health or None without a HEALTHCHECK."""
    state = document["State"]
    health = state.get("Health")
    return state["Status"], health["Status"] if health else None


def health_log(document, entries=3):
    """The last HEALTHCHECK results of a container: exit code and output, newest last."""
    log = (document["State"].get("Health") or {}).get("Log") or []
    return [
        {"exit_code": item.get("ExitCode"), "output": (item.get("Output") or "").strip()} for item in log[-entries:]
    ]


def container_logs(run, container_id, lines=20):
    rc, out, err = run(["docker", "logs", "--tail", str(lines), container_id])
    return (out + err).strip().splitlines()[-lines:] if rc == 0 else [f"docker logs failed: {err.strip()}"]


def image_record(run, document):
    """What a release records about a container's image: the reference, the image ID, repo digests."""
    image_id = document["Image"]
    rc, out, _err = run(["docker", "image", "inspect", "--format", "{{json .RepoDigests}}", image_id])
    digests = json.loads(out) if rc == 0 and out.strip() else []
    return {"image": document["Config"]["Image"], "image_id": image_id, "repo_digests": digests or []}


def keepers(run, app):
    """{name: image reference it was created from} of the app's keepers."""
    ids = check(run, ["docker", "ps", "--all", "--quiet", "--no-trunc", "--filter", f"label={KEEP_LABEL_APP}={app}"])
    if not ids.split():
        return {}
    documents = json.loads(check(run, ["docker", "inspect", *ids.split()]))
    return {document["Name"].lstrip("/"): document["Config"]["Image"] for document in documents}


def create_keeper(run, app, release, name, image):
    """Create (never start) a container of ``image``, the reference the release's compose file names:
    while the container exists, ``docker image prune`` does not remove the image."""
    labels = ["--label", f"{KEEP_LABEL_APP}={app}", "--label", f"{KEEP_LABEL_RELEASE}={release}"]
    # No network, and an entrypoint that only names its purpose: the container is never started.
    argv = ["docker", "create", "--name", name, *labels, "--network", "none", "--entrypoint", "/berth-image-keeper"]
    return check(run, [*argv, image])


def remove_containers(run, names):
    return check(run, ["docker", "rm", "--force", *names])
