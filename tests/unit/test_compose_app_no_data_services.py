"""compose_app with no data services (an app on a managed database), through the role's own task files.

ansible-playbook runs the role's data step and its preflight on this host (include_role tasks_from, so the
role's defaults and vars are the real ones) against the local Docker engine: the network the app's
services share is created, and nothing of the <app>-data project is (Compose refuses a compose file
without services, so rendering one failed the deploy). The whole deploy with no data services, on a
Docker host behind nginx, is the compose_app Molecule scenario's to run.
"""

import subprocess
import uuid
from pathlib import Path

import pytest
from role_tasks import run_role_tasks


def app_variables(tmp_path: Path, **extra) -> dict:
    return {
        "compose_app_name": "nodata",
        "compose_app_release": "r1",
        "compose_app_root": str(tmp_path / "srv"),
        "compose_app_services": [{"name": "web", "image": "example/web:1", "ports": {"blue": 18010, "green": 18020}}],
        "compose_app_data_services": [],
        **extra,
    }


@pytest.fixture
def network():
    name = f"berth-test-nodata-{uuid.uuid4().hex[:8]}"
    yield name
    for network in (name, f"{name}-blue", f"{name}-green"):
        subprocess.run(["docker", "network", "rm", network], capture_output=True, check=False)


def test_no_data_services_creates_the_network_and_no_data_project(tmp_path, network):
    completed = run_role_tasks(tmp_path, "data.yml", app_variables(tmp_path, compose_app_network=network))
    assert completed.returncode == 0, completed.stdout[-4000:]
    # Each color's app services run on their own network, which exists without data services too.
    for name in (network, f"{network}-blue", f"{network}-green"):
        inspected = subprocess.run(["docker", "network", "inspect", name], capture_output=True, check=False)
        assert inspected.returncode == 0, f"{name}: the app's services need it even without data services"
    assert not (tmp_path / "srv" / "nodata" / "data").exists()
    containers = subprocess.run(
        ["docker", "ps", "-a", "-q", "--filter", "label=com.docker.compose.project=nodata-data"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert containers.stdout == ""


def test_a_backup_service_that_names_no_data_service_is_refused_before_the_lock(tmp_path):
    variables = app_variables(
        tmp_path,
        compose_app_migrations_dir=str(tmp_path),
        compose_app_database={"name": "shop", "user": "shop"},
        compose_app_migrations_backup_service="db",
    )
    completed = run_role_tasks(tmp_path, "preflight.yml", variables)
    assert completed.returncode == 2, completed.stdout[-4000:]
    assert 'compose_app_migrations_backup_service="db" names no data service' in completed.stdout
    assert "(compose_app_data_services: none)" in completed.stdout
    assert not (tmp_path / "srv").exists()


@pytest.mark.parametrize(
    ("extra", "client"),
    [
        ({}, True),
        ({"compose_app_migrations_client_package": "postgresql-client-17"}, True),
        ({"compose_app_migrations_backup": False}, False),
        ({"compose_app_migrations_dir": ""}, False),
    ],
    ids=["host-pg_dump", "named-client", "no-backup", "no-migrations"],
)
def test_the_host_gets_a_postgresql_client_when_its_pg_dump_takes_the_backup(tmp_path, extra, client):
    variables = app_variables(
        tmp_path, compose_app_migrations_dir=str(tmp_path), compose_app_database={"name": "shop", "user": "shop"}
    )
    variables.update(extra)
    show = {"name": "Show the packages", "ansible.builtin.debug": {"msg": "PACKAGES={{ __compose_app_packages }}"}}
    completed = run_role_tasks(tmp_path, "preflight.yml", variables, after=[show])
    assert completed.returncode == 0, completed.stdout[-4000:]
    package = extra.get("compose_app_migrations_client_package", "postgresql-client")
    line = next(line for line in completed.stdout.splitlines() if "PACKAGES=" in line)
    expected = ["python3-jmespath", "python3-psycopg2"] + ([package] if client else [])
    assert line.split("PACKAGES=", 1)[1].rstrip('"') == str(expected)
