"""Prepare this machine to run berth.stack's tests and demo, idempotently.

What it ensures, each step skipped when already true:
  * the Debian packages in host-packages.txt are installed (a Docker engine among them);
  * a Docker engine answers (dockerd is started in the background when none does);
  * the Compose v2 CLI plugin is present for the host's docker client;
  * the base images exist: Debian 13 and 12 root filesystems made with debootstrap and
    `docker import`, and a systemd + python3 layer on each (rebuilt when its Dockerfile changes),
    and on Debian 13's a layer with the Docker engine's packages installed (tests/images/docker);
  * the demo application's images (tests/fixtures/demo-app) exist, rebuilt when the fixture changes;
  * ansible-test can bootstrap pip offline;
  * the collection is reachable as berth.stack through .ansible/collections, without installing it;
  * the project virtualenv has the test hosts' bytecode cache for zip imports (tests/images/systemd).

It uses only the standard library, so it runs before the project virtualenv exists.
Exit status 2 with a one-line reason when a step cannot be done.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HARNESS = REPO / "tests" / "harness"
IMAGES = REPO / "tests" / "images"
ROLES = REPO / "roles"
DEMO_APP = REPO / "tests" / "fixtures" / "demo-app"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DOCKERD_LOG = Path("/var/log/berth-dockerd.log")
STATE_DIR = Path(os.environ.get("BERTH_STATE_DIR", "/var/cache/berth-test"))
COMPOSE_PLUGIN = Path("/usr/local/lib/docker/cli-plugins/docker-compose")


@dataclass(frozen=True)
class BaseImage:
    name: str
    suite: str

    @property
    def base_tag(self) -> str:
        return f"berth/{self.name}-base:latest"

    @property
    def systemd_tag(self) -> str:
        return f"berth/{self.name}-systemd:latest"


BASE_IMAGES = (BaseImage("debian13", "trixie"), BaseImage("debian12", "bookworm"))
# The Debian 13 test host with the Docker engine's packages already installed (tests/images/docker).
DOCKER_HOST_IMAGE = "berth/debian13-docker:latest"


class HarnessError(Exception):
    """A step that cannot be done; the message says why and what to do."""


def log(message: str) -> None:
    print(f"prepare: {message}", flush=True)


def run(argv: list[str], *, check: bool = True, capture: bool = False, **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, check=check, text=True, capture_output=capture, **kwargs)
    except FileNotFoundError as exc:
        raise HarnessError(f"command not found: {argv[0]}") from exc
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip().splitlines()[-5:]
        raise HarnessError(f"`{' '.join(argv)}` failed with exit code {exc.returncode}: {' / '.join(detail)}") from exc


def is_root() -> bool:
    return os.geteuid() == 0


def read_package_list(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def missing_packages(packages: list[str]) -> list[str]:
    missing = []
    for package in packages:
        result = run(["dpkg-query", "-W", "-f=${Status}", package], check=False, capture=True)
        if "install ok installed" not in result.stdout:
            missing.append(package)
    return missing


def apt_env() -> dict[str, str]:
    return {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def ensure_host_packages() -> None:
    packages = read_package_list(HARNESS / "host-packages.txt")
    missing = missing_packages(packages)
    if not missing:
        log(f"host packages present ({len(packages)})")
        return
    if not is_root():
        raise HarnessError(f"packages {', '.join(missing)} are missing and installing them needs root: run as root")
    if not shutil.which("apt-get"):
        raise HarnessError(f"packages {', '.join(missing)} are missing and this machine has no apt-get (Debian/Ubuntu)")
    log(f"installing {' '.join(missing)}")
    run(["apt-get", "update", "-qq"], env=apt_env())
    # Tests start the services they need themselves (nginx, PostgreSQL clusters on their own ports):
    # a policy-rc.d for the install keeps the packaged services from starting on ports 80 and 5432.
    policy = Path("/usr/sbin/policy-rc.d")
    temporary_policy = not policy.exists()
    if temporary_policy:
        policy.write_text("#!/bin/sh\n# written by berth.stack tests/harness/prepare.py for one install\nexit 101\n")
        policy.chmod(0o755)
    try:
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=apt_env(), capture=True)
    finally:
        if temporary_policy:
            policy.unlink()


def docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    result = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, check=False
    )
    return result.returncode == 0 and bool(result.stdout.strip())


def ensure_docker_engine() -> None:
    if docker_answers():
        log("docker engine answers")
        return
    if not is_root():
        raise HarnessError("no Docker engine answers and starting one needs root: run as root, or start dockerd")
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    if not Path(dockerd).exists():
        raise HarnessError("no Docker engine answers and dockerd is not installed (apt-get install docker.io)")
    if shutil.which("systemctl") and Path("/run/systemd/system").exists():
        run(["systemctl", "start", "docker"], check=False)
    if not docker_answers():
        log("starting dockerd in the background")
        with DOCKERD_LOG.open("ab") as out:
            subprocess.Popen([dockerd], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if docker_answers():
            log("docker engine answers")
            return
        time.sleep(1)
    tail = DOCKERD_LOG.read_text(errors="replace").splitlines()[-5:] if DOCKERD_LOG.exists() else []
    raise HarnessError(f"dockerd did not answer within 90 s; last lines of {DOCKERD_LOG}: {' / '.join(tail)}")


def ensure_compose_plugin() -> None:
    """Compose v2 for the host's docker client, from Debian 13's docker-compose package.

    Debian 12 ships only Compose v1. A private apt state directory fetches the trixie
    package without adding trixie to this machine's sources; only the plugin binary is kept.
    """
    if run(["docker", "compose", "version", "--short"], check=False, capture=True).returncode == 0:
        log("docker compose v2 present")
        return
    if not is_root():
        raise HarnessError("docker compose v2 is missing and installing it needs root")
    state = STATE_DIR / "apt-trixie"
    (state / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    sources = state / "trixie.sources"
    sources.write_text(f"Types: deb\nURIs: {DEBIAN_MIRROR}\nSuites: trixie\nComponents: main\n")
    settings = {
        "Dir::Etc::SourceList": sources,
        "Dir::Etc::SourceParts": "/nonexistent",
        "Dir::State::Lists": state / "lists",
        "Dir::Cache": state / "cache",
    }
    options = [arg for key, value in settings.items() for arg in ("-o", f"{key}={value}")]
    log("fetching Compose v2 from Debian 13 (private apt state)")
    run(["apt-get", *options, "update", "-qq"], env=apt_env(), capture=True)
    with tempfile.TemporaryDirectory() as tmp:
        run(["apt-get", *options, "download", "docker-compose"], cwd=tmp, capture=True)
        debs = list(Path(tmp).glob("docker-compose_*.deb"))
        if not debs:
            raise HarnessError("apt-get download docker-compose produced no package")
        run(["dpkg-deb", "-x", str(debs[0]), f"{tmp}/root"])
        binary = Path(tmp, "root/usr/libexec/docker/cli-plugins/docker-compose")
        if not binary.exists():
            raise HarnessError(f"{debs[0].name} holds no docker-compose CLI plugin")
        COMPOSE_PLUGIN.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(binary, COMPOSE_PLUGIN)
    version = run(["docker", "compose", "version", "--short"], capture=True).stdout.strip()
    log(f"docker compose {version} installed as {COMPOSE_PLUGIN}")


def image_label(tag: str, label: str) -> str | None:
    result = run(
        ["docker", "image", "inspect", "--format", f'{{{{index .Config.Labels "{label}"}}}}', tag],
        check=False,
        capture=True,
    )
    if result.returncode != 0:
        return None
    return result.stdout.strip()


def directory_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def build_base_image(image: BaseImage) -> None:
    if not shutil.which("debootstrap"):
        raise HarnessError("debootstrap is missing (apt-get install debootstrap)")
    if not is_root():
        raise HarnessError(f"building {image.base_tag} with debootstrap needs root")
    log(f"debootstrap {image.suite} -> {image.base_tag}")
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix=f"berth-{image.suite}-") as rootfs:
        run(["debootstrap", "--variant=minbase", image.suite, rootfs, DEBIAN_MIRROR], capture=True)
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        run(
            [
                "docker",
                "import",
                "--change",
                'CMD ["/bin/bash"]',
                "--message",
                f"debootstrap --variant=minbase {image.suite}",
                "-",
                image.base_tag,
            ],
            stdin=tar.stdout,
            capture=True,
        )
        if tar.wait() != 0:
            raise HarnessError(f"tar of the {image.suite} root filesystem failed")


def role_var(path: Path, key: str, subkey: str | None = None) -> str | list[str]:
    """The value of a top-level key of a role's vars or defaults file (or of subkey under it): a plain
    name, or a list of plain names written `[a, b]` or as `- a` lines. Read with the standard library,
    as the rest of this file; tests/unit/harness/test_prepare.py checks it against a YAML parser."""
    lines = path.read_text().splitlines()
    owner = re.compile(rf"^{re.escape(key)}:(.*)$")
    for number, line in enumerate(lines):
        match = owner.match(line)
        if not match:
            continue
        value, rest = match.group(1).split("#", 1)[0].strip(), lines[number + 1 :]
        if subkey is not None:
            block = rest[: next((i for i, child in enumerate(rest) if re.match(r"^\S", child)), None)]
            children = (re.match(rf"^\s+{re.escape(subkey)}:(.*)$", child) for child in block)
            found = next((child for child in children if child), None)
            if found is None:
                break
            value = found.group(1).split("#", 1)[0].strip()
            rest = []
        if value.startswith("["):
            return [name.strip() for name in value.strip("[]").split(",") if name.strip()]
        if value:
            return value
        items = []
        for child in rest:
            item = re.match(r"^\s+-\s+(\S+)\s*$", child)
            if not item:
                break
            items.append(item.group(1))
        return items
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    raise HarnessError(f"{shown} has no {key}{'.' + subkey if subkey else ''}")


def docker_host_image_packages() -> list[str]:
    """What berth/debian13-docker installs: docker_host's packages for Debian 13 and for community.docker,
    compose_app's for the rollout and a pre-migration pg_dump on the host, and the test tools."""
    docker_host, compose_app = ROLES / "docker_host", ROLES / "compose_app"
    packages = [
        *role_var(docker_host / "vars" / "main.yml", "__docker_host_distribution_packages", BASE_IMAGES[0].suite),
        *role_var(docker_host / "vars" / "main.yml", "__docker_host_python_packages"),
        *role_var(compose_app / "vars" / "main.yml", "__compose_app_rollout_packages"),
        role_var(compose_app / "defaults" / "main.yml", "compose_app_migrations_client_package"),
        *read_package_list(IMAGES / "docker" / "test-tools.txt"),
    ]
    return packages


def build_image(tag: str, context: Path, base: str, digest: str, packages: list[str] | None = None) -> None:
    """docker build of the Dockerfile in context FROM base (with PACKAGES when given), labelled with the
    digest it was built from."""
    log(f"building {tag}")
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    run(
        [
            "docker",
            "build",
            "--quiet",
            "--build-arg",
            f"BASE_IMAGE={base}",
            *(["--build-arg", f"PACKAGES={' '.join(packages)}"] if packages else []),
            "--label",
            f"berth.dockerfile-digest={digest}",
            "--tag",
            tag,
            str(context),
        ],
        env=env,
        capture=True,
    )


def ensure_base_images(rebuild: bool) -> None:
    digest = directory_digest(IMAGES / "systemd")
    for image in BASE_IMAGES:
        base_missing = image_label(image.base_tag, "none") is None
        if rebuild or base_missing:
            build_base_image(image)
        if rebuild or base_missing or image_label(image.systemd_tag, "berth.dockerfile-digest") != digest:
            build_image(image.systemd_tag, IMAGES / "systemd", image.base_tag, digest)
        log(f"image {image.systemd_tag} ready")
    # Rebuilt when its own Dockerfile, its package list or the systemd image's Dockerfile changes.
    packages = docker_host_image_packages()
    package_digest = hashlib.sha256(" ".join(packages).encode()).hexdigest()[:16]
    docker_digest = f"{digest}-{directory_digest(IMAGES / 'docker')}-{package_digest}"
    if rebuild or image_label(DOCKER_HOST_IMAGE, "berth.dockerfile-digest") != docker_digest:
        build_image(DOCKER_HOST_IMAGE, IMAGES / "docker", BASE_IMAGES[0].systemd_tag, docker_digest, packages)
    log(f"image {DOCKER_HOST_IMAGE} ready")


def demo_image_builds() -> list[tuple[str, Path, str | None, dict[str, str]]]:
    """(tag, build context, target stage, build args) for every demo image; versions.json lists the versions."""
    builds: list[tuple[str, Path, str | None, dict[str, str]]] = [
        ("berth/demo-postgres:latest", DEMO_APP / "postgres", None, {}),
        ("berth/demo-redis:latest", DEMO_APP / "redis", None, {}),
    ]
    versions = json.loads((DEMO_APP / "versions.json").read_text())
    for version, build_args in versions.items():
        for target in ("backend", "frontend", "worker"):
            builds.append((f"berth/demo-{target}:{version}", DEMO_APP, target, build_args))
    return builds


def ensure_demo_images(rebuild: bool) -> None:
    """The demo app's images, FROM the Debian 13 base image; rebuilt when the fixture or that image changes."""
    base_id = run(["docker", "image", "inspect", "--format", "{{.Id}}", BASE_IMAGES[0].base_tag], capture=True)
    digest = hashlib.sha256(f"{directory_digest(DEMO_APP)} {base_id.stdout.strip()}".encode()).hexdigest()[:16]
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    builds = demo_image_builds()
    for tag, context, target, build_args in builds:
        if not rebuild and image_label(tag, "berth.fixture-digest") == digest:
            continue
        log(f"building {tag}")
        argv = ["docker", "build", "--quiet", "--label", f"berth.fixture-digest={digest}", "--tag", tag]
        argv += ["--target", target] if target else []
        for name, value in build_args.items():
            argv += ["--build-arg", f"{name}={value}"]
        run([*argv, str(context)], env=env, capture=True)
    log(f"demo images ready ({len(builds)})")


GET_PIP_STAND_IN = '''\
"""Offline stand-in for ansible-test's downloaded get-pip.py (written by tests/harness/prepare.py).

ansible-test runs this file to put pip into a fresh virtualenv. Here pip comes from ensurepip,
then the requested packages from the configured package index.
"""
import subprocess
import sys

subprocess.run([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"], check=True)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.run([sys.executable, "-m", "pip", "install", "--cert", "/etc/ssl/certs/ca-certificates.crt", *args],
               check=True)
'''


def ansible_test_pip_versions() -> set[str]:
    """The pip versions ansible-test will ask a bootstrap script for, read from its own source."""
    versions = set()
    for package in (REPO / ".venv" / "lib").glob("python3*/site-packages/ansible_test"):
        requirements = package / "_internal" / "python_requirements.py"
        if requirements.exists():
            versions.update(re.findall(r"pip='([0-9.]+)'", requirements.read_text()))
    return versions


def ensure_ansible_test_bootstrap() -> None:
    """ansible-test downloads a pip bootstrap script from a host these machines cannot reach."""
    versions = ansible_test_pip_versions()
    if not versions:
        raise HarnessError("ansible-test is not installed in .venv (run `make venv`)")
    cache = Path.home() / ".ansible" / "test" / "cache"
    for version in sorted(versions):
        path = cache / f"get_pip_{version.replace('.', '_')}.py"
        if not path.exists() or path.read_text() != GET_PIP_STAND_IN:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(GET_PIP_STAND_IN)
            log(f"wrote offline pip bootstrap {path}")
        Path(f"{path}.download").unlink(missing_ok=True)


def ensure_collection_link() -> None:
    link = REPO / ".ansible" / "collections" / "ansible_collections" / "berth" / "stack"
    if link.is_symlink() and link.resolve() == REPO:
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)
        else:
            link.unlink()
    link.symlink_to(os.path.relpath(REPO, link.parent))
    log(f"linked {link.relative_to(REPO)} -> checkout")


def ensure_zipimport_cache(site: Path | None = None) -> None:
    """The test hosts' bytecode cache for zip imports (tests/images/systemd), in the project virtualenv
    too: modules that run on this machine (connection local, delegate_to localhost) use its interpreter,
    which would otherwise compile ansible.module_utils from the payload's zip at every task."""
    if site is None:
        if sys.prefix == sys.base_prefix:
            log("zipimport cache: not in a virtualenv, left out")
            return
        site = Path(sysconfig.get_path("purelib"))
    changed = []
    for name in ("berth_zipimport_cache.py", "berth-zipimport-cache.pth"):
        source, target = IMAGES / "systemd" / name, site / name
        if not target.exists() or target.read_bytes() != source.read_bytes():
            shutil.copyfile(source, target)
            changed.append(name)
    if changed:
        log(f"zipimport cache: installed {', '.join(changed)} in {site}")


STEPS = {
    "packages": ensure_host_packages,
    "engine": ensure_docker_engine,
    "compose": ensure_compose_plugin,
    "images": None,  # takes the --rebuild-images flag
    "demo-images": None,  # takes the --rebuild-images flag
    "ansible-test": ensure_ansible_test_bootstrap,
    "link": ensure_collection_link,
    "zipimport-cache": ensure_zipimport_cache,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild-images", action="store_true", help="rebuild the base images even if present")
    parser.add_argument(
        "--only", choices=sorted(STEPS), action="append", help="run only these steps (repeatable); default: all"
    )
    args = parser.parse_args(argv)
    selected = args.only or list(STEPS)
    started = time.monotonic()
    try:
        for step in STEPS:
            if step not in selected:
                continue
            if step == "images":
                ensure_base_images(args.rebuild_images)
            elif step == "demo-images":
                ensure_demo_images(args.rebuild_images)
            else:
                STEPS[step]()
    except HarnessError as exc:
        print(f"prepare: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prepare: interrupted", file=sys.stderr)
        return 130
    log(f"machine ready in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
