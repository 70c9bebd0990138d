"""compose_app's release template, rendered by ansible-playbook as the role renders it and read back
by `docker compose config`: a service's boot_grace becomes Docker's healthcheck start_period, so a
Docker "unhealthy" inside the grace never happens, unless the healthcheck sets its own start_period;
and each color's services join only that color's network."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "roles" / "compose_app" / "templates" / "compose.yaml.j2"
DATA_TEMPLATE = REPO / "roles" / "compose_app" / "templates" / "data-compose.yaml.j2"


def render(tmp_path, services, color="blue", template=TEMPLATE, **role_vars):
    """The compose file's configuration as `docker compose config` reads it for one color."""
    dest = tmp_path / "compose.yaml"
    play = {
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "vars": {
            "compose_app_name": "demo",
            "compose_app_release": "v1",
            "compose_app_network": "demo",
            "compose_app_restart_policy": "unless-stopped",
            "compose_app_services": services,
            "compose_app_data_services": services,
            "__compose_app_data_dir": str(tmp_path),
            "compose_app_healthcheck_defaults": {},
            **role_vars,
        },
        "tasks": [{"ansible.builtin.template": {"src": str(template), "dest": str(dest), "mode": "0644"}}],
    }
    playbook = tmp_path / "render.yml"
    playbook.write_text(yaml.safe_dump([play]))
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": str(REPO / ".ansible" / "collections"),
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
    }
    ansible_playbook = shutil.which("ansible-playbook") or str(REPO / ".venv/bin/ansible-playbook")
    completed = subprocess.run(
        [ansible_playbook, str(playbook)], capture_output=True, text=True, env=env, cwd=REPO, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stdout[-2000:]
    ports = {"BERTH_COLOR": color, "BERTH_PORT_WEB": "18010", "BERTH_PORT_SLOW": "18011", "BERTH_PORT_OWN": "18012"}
    config = subprocess.run(
        ["docker", "compose", "--file", str(dest), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env={**os.environ, **ports},
        timeout=60,
        check=True,
    )
    return json.loads(config.stdout)


def test_boot_grace_becomes_the_healthcheck_start_period_unless_the_healthcheck_sets_one(tmp_path):
    check = {"test": ["CMD", "true"], "interval": "2s"}
    services = render(
        tmp_path,
        [
            {"name": "web", "image": "demo/web:v1", "container_port": 8000, "healthcheck": check},
            {"name": "slow", "image": "demo/web:v1", "container_port": 8000, "boot_grace": 14.2, "healthcheck": check},
            {
                "name": "own",
                "image": "demo/web:v1",
                "container_port": 8000,
                "boot_grace": 20,
                "healthcheck": {**check, "start_period": "40s"},
            },
            {"name": "graceonly", "image": "demo/worker:v1", "boot_grace": 5},
        ],
    )["services"]
    assert "start_period" not in services["web"]["healthcheck"]
    # Rounded up to whole seconds: Docker's grace is never shorter than berth's.
    assert services["slow"]["healthcheck"]["start_period"] == "15s"
    assert services["slow"]["healthcheck"]["interval"] == "2s"
    assert services["own"]["healthcheck"]["start_period"] == "40s"
    # Without a healthcheck of its own the service gets only the start_period: the image's HEALTHCHECK
    # command stays, with the grace around it.
    assert services["graceonly"]["healthcheck"] == {"start_period": "5s"}


def test_the_healthcheck_defaults_go_under_every_services_own_healthcheck(tmp_path):
    """compose_app_healthcheck_defaults reach every app and data service; a service's own keys and its
    boot_grace win; a key set nowhere is left to the image's HEALTHCHECK (absent from the file)."""
    defaults = {"interval": "30s", "start_interval": "500ms", "timeout": "3s", "start_period": "30s"}
    services = [
        {"name": "web", "image": "demo/web:v1", "container_port": 8000, "healthcheck": {"interval": "2s"}},
        {"name": "slow", "image": "demo/web:v1", "container_port": 8000, "boot_grace": 9},
    ]
    app = render(tmp_path, services, compose_app_healthcheck_defaults=defaults)["services"]
    assert app["web"]["healthcheck"] == {**defaults, "interval": "2s"}
    assert app["slow"]["healthcheck"] == {**defaults, "start_period": "9s"}
    data = render(tmp_path, services, template=DATA_TEMPLATE, compose_app_healthcheck_defaults=defaults)["services"]
    assert data["web"]["healthcheck"] == {**defaults, "interval": "2s"}
    assert data["slow"]["healthcheck"] == defaults
    # Without defaults, nothing is added: the image's HEALTHCHECK applies as it is.
    assert "healthcheck" not in render(tmp_path, services[1:], template=DATA_TEMPLATE)["services"]["slow"]


def test_each_color_runs_on_its_own_network_only(tmp_path):
    """A service name resolves within a color: the app services join no network the other color joins."""
    services = [{"name": "web", "image": "demo/web:v1", "container_port": 8000}, {"name": "worker", "image": "w:1"}]
    for color in ("blue", "green"):
        config = render(tmp_path, services, color)
        assert {key: value["name"] for key, value in config["networks"].items()} == {"color": f"demo-{color}"}
        assert config["networks"]["color"]["external"] is True
        assert {name: list(service["networks"]) for name, service in config["services"].items()} == {
            "web": ["color"],
            "worker": ["color"],
        }


def test_secret_files_are_mounted_read_only_from_the_release_directory(tmp_path):
    """Each service mounts only its own files, at /run/secrets/<name>, from secrets/<service>/ beside the
    compose file; the values never enter the compose file."""
    services = [
        {"name": "api", "image": "shop/api:1", "user": "10001", "secret_files": {"jwt_secret": "v-a", "db.pw": "v-b"}},
        {"name": "worker", "image": "shop/worker:1", "user": "10001", "secret_files": {"jwt_secret": "v-c"}},
        {"name": "web", "image": "shop/web:1"},
    ]
    config = render(tmp_path, services)
    mounts = {
        name: sorted((entry["source"], entry["target"]) for entry in service.get("secrets", []))
        for name, service in config["services"].items()
    }
    assert mounts == {
        "api": [("s0_db.pw", "db.pw"), ("s0_jwt_secret", "jwt_secret")],
        "worker": [("s1_jwt_secret", "jwt_secret")],
        "web": [],
    }
    assert {key: secret["file"] for key, secret in config["secrets"].items()} == {
        "s0_db.pw": str(tmp_path / "secrets/api/db.pw"),
        "s0_jwt_secret": str(tmp_path / "secrets/api/jwt_secret"),
        "s1_jwt_secret": str(tmp_path / "secrets/worker/jwt_secret"),
    }
    assert "v-a" not in (tmp_path / "compose.yaml").read_text()
