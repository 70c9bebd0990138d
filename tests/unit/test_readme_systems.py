"""The README's "Systems like yours": every inventory snippet passes the roles' own checks.

Each YAML block of that section is read as inventory variables: compose_app_* against compose_app's
argument spec (as role argument validation reads it), nginx_* against nginx's, and the services against
the service model the rollout module applies (ports, upstreams, probes). A snippet that names a
variable or key the roles do not take, or a value of the wrong type, fails here, naming it.
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
    assert set(snippet) == {key for key in snippet if key.startswith(("compose_app_", "nginx_"))}, snippet.keys()
    app = {key: value for key, value in snippet.items() if key.startswith("compose_app_")}
    # The required options the shorter snippets leave to the one before them.
    app = {"compose_app_name": "shop", "compose_app_release": "v1", **app}
    result = ArgumentSpecValidator(options("compose_app")).validate(app)
    assert [str(error) for error in result.errors] == []
    nginx = {key: value for key, value in snippet.items() if key.startswith("nginx_")}
    result = ArgumentSpecValidator(options("nginx")).validate(nginx)
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
