"""The README's "Systems like yours": every inventory snippet passes the roles' own checks.

Each YAML block of that section is read as inventory variables: compose_app_* against compose_app's
argument spec (as role argument validation reads it), nginx_* against nginx's, firewall_* against the
firewall's, and the services against the service model the rollout module applies (ports, upstreams,
probes). A snippet that names a variable or key the roles do not take, or a value of the wrong type,
fails here, naming it.
"""

import re
from pathlib import Path

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible_collections.berth.stack.plugins.module_utils import _service_model as model

REPO = Path(__file__).resolve().parents[2]

SECTION = REPO.joinpath("README.md").read_text().split("## Systems like yours", 1)[1].split("\n## ", 1)[0]
# Rendered as the inventory would be for a release tagged 3f9c2a1; other templates (secrets) stay as text.
SNIPPETS = [
    yaml.safe_load(block.replace("{{ product_release_tag }}", "3f9c2a1"))
    for block in re.findall(r"```yaml\n(.*?)```", SECTION, re.DOTALL)
]


def options(role):
    specs = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())
    return specs["argument_specs"]["main"]["options"]


def test_the_section_has_a_snippet_for_each_system():
    assert len(SNIPPETS) == 4


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[f"snippet{index}" for index in range(len(SNIPPETS))])
def test_a_snippet_passes_the_roles_argument_specs_and_the_service_model(snippet):
    assert set(snippet) == {key for key in snippet if key.startswith(("compose_app_", "nginx_", "firewall_"))}, (
        snippet.keys()
    )
    app = {key: value for key, value in snippet.items() if key.startswith("compose_app_")}
    # The required options the shorter snippets leave to the one before them.
    app = {"compose_app_name": "shop", "compose_app_release": "v1", **app}
    result = ArgumentSpecValidator(options("compose_app")).validate(app)
    assert [str(error) for error in result.errors] == []
    nginx = {key: value for key, value in snippet.items() if key.startswith("nginx_")}
    result = ArgumentSpecValidator(options("nginx")).validate(nginx)
    assert [str(error) for error in result.errors] == []
    firewall = {key: value for key, value in snippet.items() if key.startswith("firewall_")}
    result = ArgumentSpecValidator(options("firewall")).validate(firewall)
    assert [str(error) for error in result.errors] == []
    assert model.service_errors(app["compose_app_name"], app["compose_app_services"], "compose_app_services") == []
    assert model.data_service_errors(app.get("compose_app_data_services", [])) == []


def test_a_wrong_key_in_a_snippet_would_fail():
    """The check above can fail: a site's port given as text is refused, naming listen_port."""
    nginx = {"nginx_sites": [{"name": "shop", "server_name": ["shop.test"], "listen_port": "six", "locations": []}]}
    errors = " ".join(str(error) for error in ArgumentSpecValidator(options("nginx")).validate(nginx).errors)
    assert "listen_port" in errors
    services = [{"name": "backend", "image": "x", "container_port": 8000, "probes": [{"path": "/ready"}]}]
    assert model.service_errors("shop", services, "compose_app_services") == [
        "compose_app_services[backend].ports: required (blue and green host ports) with container_port, probes"
    ]


def redis_settings(services):
    """The orders worker's Redis settings: its REDIS_* variables and the secret files they name."""
    worker = next(service for service in services if service["name"] == "worker")
    environment = {name: value for name, value in worker["environment"].items() if name.startswith("REDIS_")}
    return environment, sorted(name for name in worker["secret_files"] if name.startswith("redis_"))


def test_system_b_workers_take_redis_as_the_scenario_gives_it():
    """The README's system B (the first snippet) gives the workers Redis as seed_systems' orders workers
    get it: the same variables and secret files, the server's name the README's own."""
    scenario = yaml.safe_load((REPO / "molecule" / "seed_systems" / "vars" / "orders.yml").read_text())
    environment, files = redis_settings(scenario["compose_app_services"])
    assert (environment, files) == (
        {
            "REDIS_URL": "rediss://cache.managed.test:6380/0",
            "REDIS_CA_FILE": "/run/secrets/redis_ca",
            "REDIS_PASSWORD_FILE": "/run/secrets/redis_password",
        },
        ["redis_ca", "redis_password"],
    )
    readme_environment, readme_files = redis_settings(SNIPPETS[0]["compose_app_services"])
    assert readme_environment == {**environment, "REDIS_URL": "rediss://cache.managed.example.com:6380/0"}
    assert readme_files == files
