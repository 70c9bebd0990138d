"""The machine-preparation entry point: pure helpers and its behaviour as a command."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
PREPARE = REPO / "tests" / "harness" / "prepare.py"

spec = importlib.util.spec_from_file_location("berth_prepare", PREPARE)
prepare = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = prepare
spec.loader.exec_module(prepare)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("docker.io\ndebootstrap\n", ["docker.io", "debootstrap"]),
        ("# comment only\n\n", []),
        ("rsync  # inline comment\n   \nshellcheck\n", ["rsync", "shellcheck"]),
    ],
)
def test_read_package_list(tmp_path, text, expected):
    path = tmp_path / "packages.txt"
    path.write_text(text)
    assert prepare.read_package_list(path) == expected


def test_host_package_list_names_the_engine_and_debootstrap():
    packages = prepare.read_package_list(REPO / "tests" / "harness" / "host-packages.txt")
    assert {"docker.io", "debootstrap"} <= set(packages)


def test_directory_digest_changes_with_content_and_names(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM a\n")
    first = prepare.directory_digest(tmp_path)
    assert prepare.directory_digest(tmp_path) == first
    (tmp_path / "Dockerfile").write_text("FROM b\n")
    second = prepare.directory_digest(tmp_path)
    assert second != first
    (tmp_path / "Dockerfile").rename(tmp_path / "Containerfile")
    assert prepare.directory_digest(tmp_path) not in {first, second}


def test_missing_packages_reports_only_absent_ones():
    assert prepare.missing_packages(["dpkg", "berth-no-such-package"]) == ["berth-no-such-package"]


def test_ansible_test_pip_versions_are_read_from_the_installed_ansible_test():
    versions = prepare.ansible_test_pip_versions()
    assert versions, "ansible-test in .venv names the pip version it bootstraps"
    for version in versions:
        stand_in = Path.home() / ".ansible" / "test" / "cache" / f"get_pip_{version.replace('.', '_')}.py"
        assert stand_in.read_text() == prepare.GET_PIP_STAND_IN


def test_collection_link_points_at_the_checkout():
    link = REPO / ".ansible" / "collections" / "ansible_collections" / "berth" / "stack"
    assert link.is_symlink()
    assert link.resolve() == REPO
    assert (link / "galaxy.yml").exists()


def run_prepare_as_nobody(*args, env_extra=None):
    # The system interpreter: the project's virtualenv links to one under /root, closed to nobody.
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/nonexistent", **(env_extra or {})}
    return subprocess.run(
        ["runuser", "-u", "nobody", "--", "/usr/bin/python3", str(PREPARE), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to an unprivileged user needs root")
def test_without_root_and_engine_it_fails_with_a_reason_not_a_traceback():
    result = run_prepare_as_nobody("--only", "engine", env_extra={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert result.returncode == 2
    assert "no Docker engine answers and starting one needs root" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("text", "key", "subkey", "expected"),
    [
        ("a: [x, y]\nb: z\n", "a", None, ["x", "y"]),
        ("a:\n  - x\n  - y  \nb: [z]\n", "a", None, ["x", "y"]),
        ("a: plain  # a comment\n", "a", None, "plain"),
        ("ab: [no]\na:\n  one: [x]\n  two: [y, z]\n", "a", "two", ["y", "z"]),
        ("a:\n  one: [x]\nb:\n  two: [y]\na_two: [z]\n", "b", "two", ["y"]),
    ],
)
def test_role_var_reads_a_name_or_a_list_of_names(tmp_path, text, key, subkey, expected):
    path = tmp_path / "main.yml"
    path.write_text(text)
    assert prepare.role_var(path, key, subkey) == expected


@pytest.mark.parametrize(("text", "subkey"), [("a:\n  one: [x]\nb:\n  two: [y]\n", "two"), ("b: [x]\n", None)])
def test_role_var_refuses_a_key_or_subkey_it_does_not_find_where_it_belongs(tmp_path, text, subkey):
    path = tmp_path / "main.yml"
    path.write_text(text)
    with pytest.raises(prepare.HarnessError, match="has no a"):
        prepare.role_var(path, "a", subkey)


def test_role_var_names_the_file_and_the_key_it_did_not_find():
    path = REPO / "roles" / "docker_host" / "vars" / "main.yml"
    with pytest.raises(
        prepare.HarnessError, match=r"roles/docker_host/vars/main.yml has no __docker_host_distribution_packages\.sid"
    ):
        prepare.role_var(path, "__docker_host_distribution_packages", "sid")


def test_the_docker_host_image_installs_what_the_roles_vars_name():
    """The image's packages are read from the roles, so they cannot drift from what the roles install."""
    docker_vars = yaml.safe_load((REPO / "roles" / "docker_host" / "vars" / "main.yml").read_text())
    compose_vars = yaml.safe_load((REPO / "roles" / "compose_app" / "vars" / "main.yml").read_text())
    compose_defaults = yaml.safe_load((REPO / "roles" / "compose_app" / "defaults" / "main.yml").read_text())
    tools = prepare.read_package_list(REPO / "tests" / "images" / "docker" / "test-tools.txt")
    expected = [
        *docker_vars["__docker_host_distribution_packages"]["trixie"],
        *docker_vars["__docker_host_python_packages"],
        *compose_vars["__compose_app_rollout_packages"],
        compose_defaults["compose_app_migrations_client_package"],
        *tools,
    ]
    assert prepare.docker_host_image_packages() == expected
    assert len(set(expected)) == len(expected)
    assert {"docker.io", "docker-cli", "python3-docker", "python3-jmespath", "postgresql-client"} <= set(expected)


def test_the_zipimport_cache_goes_into_a_site_directory_once_and_loads_at_start_up(tmp_path):
    prepare.ensure_zipimport_cache(tmp_path)
    installed = {path.name: path.stat().st_mtime_ns for path in tmp_path.iterdir()}
    assert sorted(installed) == ["berth-zipimport-cache.pth", "berth_zipimport_cache.py"]
    prepare.ensure_zipimport_cache(tmp_path)
    assert {path.name: path.stat().st_mtime_ns for path in tmp_path.iterdir()} == installed
    # A site directory's .pth runs at start-up: zip imports then compile through the hook.
    probe = "import site, sys, zipimport; site.addsitedir(sys.argv[1]); print(zipimport._compile_source.__module__)"
    result = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "berth_zipimport_cache"
