"""compose_app's release template, rendered by ansible-playbook as the role renders it and read back
by `docker compose config`: a service's boot_grace becomes Docker's healthcheck start_period, so a
Docker "unhealthy" inside the grace never happens, unless the healthcheck sets its own start_period."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "roles" / "compose_app" / "templates" / "compose.yaml.j2"


def render(tmp_path, services):
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
        },
        "tasks": [{"ansible.builtin.template": {"src": str(TEMPLATE), "dest": str(dest), "mode": "0644"}}],
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
    ports = {"BERTH_PORT_WEB": "18010", "BERTH_PORT_SLOW": "18011", "BERTH_PORT_OWN": "18012"}
    config = subprocess.run(
        ["docker", "compose", "--file", str(dest), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env={**os.environ, **ports},
        timeout=60,
        check=True,
    )
    return json.loads(config.stdout)["services"]


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
    )
    assert "start_period" not in services["web"]["healthcheck"]
    # Rounded up to whole seconds: Docker's grace is never shorter than berth's.
    assert services["slow"]["healthcheck"]["start_period"] == "15s"
    assert services["slow"]["healthcheck"]["interval"] == "2s"
    assert services["own"]["healthcheck"]["start_period"] == "40s"
    # Without a healthcheck of its own the service gets only the start_period: the image's HEALTHCHECK
    # command stays, with the grace around it.
    assert services["graceonly"]["healthcheck"] == {"start_period": "5s"}
