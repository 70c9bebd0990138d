"""compose_app_registry_logins through compose_app's own images.yml on the local Docker engine, against
Debian's docker-registry (its binary, unpacked from the .deb, so no service is installed on this
machine) with htpasswd auth on 127.0.0.1: the pull works with the login and is refused without it, a
wrong password is named, and whatever happens no credentials stay on the host or in the output."""

import base64
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest
from role_tasks import run_role_tasks

USER = "deployer"
PASSWORD = "s3cret-Regi5try-pw"  # noqa: S105 - the test registry's own password
SECRETS = [PASSWORD, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()]
APP = "regtest"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bcrypt_line(user: str, password: str) -> str:
    # distribution's htpasswd takes bcrypt only; glibc's libxcrypt on Debian makes it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # Deprecated (gone in Python 3.13; the controller runs 3.11): imported where its warning is silenced.
        import crypt

        return f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n"  # noqa: S324 - bcrypt, all htpasswd takes


def docker(*argv, config=None, **kwargs):
    prefix = ["docker", *(["--config", str(config)] if config else [])]
    return subprocess.run([*prefix, *argv], capture_output=True, text=True, check=True, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """host:port of a docker-registry that wants a login, holding one tiny image pushed by the test."""
    root = tmp_path_factory.mktemp("registry")
    subprocess.run(["apt-get", "download", "docker-registry"], cwd=root, check=True, capture_output=True, timeout=300)
    (deb,) = root.glob("docker-registry_*.deb")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root / "pkg")], check=True)
    (root / "htpasswd").write_text(bcrypt_line(USER, PASSWORD))
    address = f"127.0.0.1:{free_port()}"
    (root / "config.yml").write_text(
        json.dumps(
            {
                "version": 0.1,
                "storage": {"filesystem": {"rootdirectory": str(root / "data")}},
                "http": {"addr": address},
                "auth": {"htpasswd": {"realm": "berth-test", "path": str(root / "htpasswd")}},
            }
        )
    )
    server = subprocess.Popen(
        [str(root / "pkg/usr/bin/docker-registry"), "serve", str(root / "config.yml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _attempt in range(50):
            try:
                urllib.request.urlopen(f"http://{address}/v2/", timeout=2)
            except urllib.error.HTTPError as error:
                assert error.code == 401, error
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail(f"docker-registry on {address} never answered")
        # A one-file image, pushed with a login of its own that is gone before any test runs.
        (root / "image").mkdir()
        (root / "image/release").write_text("1\n")
        image = f"{address}/berth/regtest:1"
        archive = subprocess.run(["tar", "-C", str(root / "image"), "-c", "."], capture_output=True, check=True)
        subprocess.run(["docker", "import", "-", image], input=archive.stdout, capture_output=True, check=True)
        push_config = root / "push-config"
        docker("login", "--username", USER, "--password-stdin", address, config=push_config, input=PASSWORD)
        docker("push", image, config=push_config)
        docker("rmi", image)
        subprocess.run(["rm", "-rf", str(push_config)], check=True)
        yield address
    finally:
        server.terminate()
        server.wait(timeout=10)


def images_step(tmp_path, image, logins, check=False):
    variables = {
        "compose_app_name": APP,
        "compose_app_image_policy": "pull",
        "compose_app_services": [{"name": "web", "image": image}],
        "compose_app_registry_logins": logins,
    }
    return run_role_tasks(tmp_path, "images.yml", variables, check=check)


def image_present(image: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False).returncode == 0


def assert_no_credentials_left(completed):
    output = completed.stdout + completed.stderr
    for secret in SECRETS:
        assert secret not in output
    assert list(Path("/run").glob(f"berth-{APP}-registry.*")) == []
    # root's own Docker config is neither read nor written, and nothing under /run holds the login.
    holders = subprocess.run(
        ["grep", "-rlsF", *[f"-e{secret}" for secret in SECRETS], "/run", "/root/.docker"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert holders.stdout == ""


@pytest.fixture
def image(registry):
    reference = f"{registry}/berth/regtest:1"
    subprocess.run(["docker", "rmi", reference], capture_output=True, check=False)
    yield reference
    subprocess.run(["docker", "rmi", reference], capture_output=True, check=False)


def test_a_pull_with_the_deploys_login_works_and_leaves_no_credentials(tmp_path, registry, image):
    completed = images_step(tmp_path, image, [{"registry": registry, "username": USER, "password": PASSWORD}])
    assert completed.returncode == 0, completed.stdout
    assert image_present(image)
    assert "TASK [berth.stack.compose_app : Remove the deploy's registry logins from the host]" in completed.stdout
    assert_no_credentials_left(completed)


def test_a_pull_without_a_login_is_refused_by_the_registry(tmp_path, image):
    completed = images_step(tmp_path, image, [])
    assert completed.returncode != 0
    assert "no basic auth credentials" in completed.stdout, completed.stdout
    assert not image_present(image)


def test_a_wrong_password_is_named_and_nothing_is_pulled_or_left(tmp_path, registry, image):
    wrong = PASSWORD + "-wrong"
    completed = images_step(tmp_path, image, [{"registry": registry, "username": USER, "password": wrong}])
    assert completed.returncode != 0
    assert f"compose_app_registry_logins: {registry} refused the login" in completed.stdout, completed.stdout
    assert wrong not in completed.stdout + completed.stderr
    assert not image_present(image)
    assert_no_credentials_left(completed)


def test_a_failed_pull_after_the_login_leaves_no_credentials(tmp_path, registry, image):
    missing = image.replace(":1", ":no-such-tag")
    completed = images_step(tmp_path, missing, [{"registry": registry, "username": USER, "password": PASSWORD}])
    assert completed.returncode != 0
    assert "Pull the release's images" in completed.stdout
    assert "manifest unknown" in completed.stdout, completed.stdout
    assert_no_credentials_left(completed)


def test_check_mode_logs_in_pulls_nothing_and_leaves_no_credentials(tmp_path, registry, image):
    """--check asks the registry whether the login is good (the answer a real deploy would get), then
    reports the pull it would make, makes none, and removes the private login directory as a deploy does."""
    completed = images_step(tmp_path, image, [{"registry": registry, "username": USER, "password": PASSWORD}], True)
    assert completed.returncode == 0, completed.stdout
    assert "TASK [berth.stack.compose_app : Pull the release's images]" in completed.stdout
    assert f"changed: [localhost] => (item={image})" in completed.stdout, completed.stdout
    assert not image_present(image)
    assert_no_credentials_left(completed)


def test_check_mode_names_a_wrong_password_and_leaves_no_credentials(tmp_path, registry, image):
    wrong = PASSWORD + "-wrong"
    completed = images_step(tmp_path, image, [{"registry": registry, "username": USER, "password": wrong}], True)
    assert completed.returncode != 0
    assert f"compose_app_registry_logins: {registry} refused the login" in completed.stdout, completed.stdout
    assert wrong not in completed.stdout + completed.stderr
    assert not image_present(image)
    assert_no_credentials_left(completed)


def test_a_registry_listed_twice_is_refused_before_anything(tmp_path, registry):
    login = {"registry": registry, "username": USER, "password": PASSWORD}
    variables = {
        "compose_app_name": APP,
        "compose_app_release": "r1",
        "compose_app_services": [{"name": "web", "image": "berth/debian13-base"}],
        "compose_app_registry_logins": [login, login],
    }
    completed = run_role_tasks(tmp_path, "preflight.yml", variables)
    assert completed.returncode != 0
    assert f"lists {registry} more than once" in completed.stdout, completed.stdout
    assert PASSWORD not in completed.stdout + completed.stderr


def test_a_rollback_pulls_a_gone_image_by_digest_with_the_login(tmp_path, registry, image):
    login = [{"registry": registry, "username": USER, "password": PASSWORD}]
    assert images_step(tmp_path, image, login).returncode == 0
    found = json.loads(docker("image", "inspect", image).stdout)[0]
    docker("rmi", image)
    variables = {
        "compose_app_name": APP,
        "compose_app_image_policy": "pull",
        "compose_app_registry_logins": login,
        "__compose_app_rollback": {
            "release": "r1",
            "images": {"web": {"image": image, "image_id": found["Id"], "repo_digests": found["RepoDigests"]}},
        },
    }
    completed = run_role_tasks(tmp_path, "recorded_images.yml", variables)
    assert completed.returncode == 0, completed.stdout[-3000:]
    assert json.loads(docker("image", "inspect", image).stdout)[0]["Id"] == found["Id"]
    assert "TASK [berth.stack.compose_app : Remove the deploy's registry logins from the host]" in completed.stdout
    assert_no_credentials_left(completed)
