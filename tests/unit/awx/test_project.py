"""The repository as AWX (or a new user) gets it: a clone that runs, requirements, an EE definition, inventories."""

import json
import re
from pathlib import Path

import pytest
import yaml
from awx_harness import BIN, REPO, TEST_VAULT_PASSWORD, copy_project, run, tool_env

BUNDLED = Path(BIN).parent / "lib"
ENVIRONMENTS = ("prod", "staging")
ENTRY_PLAYBOOKS = ("deploy.yml", "playbooks/preflight.yml", "playbooks/provision.yml", "playbooks/rollback.yml")


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """The checkout as git would clone it: no .venv, no .ansible link, no build output."""
    destination = tmp_path_factory.mktemp("clone") / "product"
    copy_project(destination)
    assert not (destination / ".ansible").exists()
    return destination


@pytest.mark.parametrize("environment", ENVIRONMENTS)
@pytest.mark.parametrize("playbook", ENTRY_PLAYBOOKS)
def test_a_clone_finds_the_collection_from_its_own_tree(clone, environment, playbook):
    """AWX replaces ansible.cfg's collections path with its own: collections/ next to the playbook still counts."""
    env = tool_env(ANSIBLE_COLLECTIONS_PATH=str(clone / "requirements_collections"))
    command = [str(BIN / "ansible-playbook"), playbook, "-i", f"inventories/{environment}", "--syntax-check"]
    result = run(command, env=env, cwd=clone)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_collection_links_point_at_the_checkout(clone):
    link = clone / "collections" / "ansible_collections" / "berth" / "stack"
    assert link.is_symlink()
    assert str(link.readlink()) == "../../.."
    assert link.resolve() == clone.resolve()
    assert (clone / "playbooks" / "collections").resolve() == (clone / "collections").resolve()
    config = (REPO / "ansible.cfg").read_text()
    assert re.search(r"^collections_path = \./collections:", config, re.MULTILINE)


def bundled_versions():
    versions = {}
    for manifest in BUNDLED.glob("python3*/site-packages/ansible_collections/*/*/MANIFEST.json"):
        info = json.loads(manifest.read_text())["collection_info"]
        versions[f"{info['namespace']}.{info['name']}"] = info["version"]
    return versions


def test_collection_requirements_match_the_bundle_the_tests_run():
    requirements = yaml.safe_load((REPO / "collections" / "requirements.yml").read_text())["collections"]
    bundled = bundled_versions()
    assert requirements, "collections/requirements.yml lists nothing"
    for requirement in requirements:
        assert requirement["version"] == bundled[requirement["name"]], requirement
    dependencies = yaml.safe_load((REPO / "galaxy.yml").read_text())["dependencies"]
    assert set(dependencies) <= {requirement["name"] for requirement in requirements}


def test_controller_requirements_name_what_the_plugins_import():
    requirements = (REPO / "requirements.txt").read_text()
    for library in ("pglast", "jmespath", "ansible-core", "ansible"):
        assert re.search(rf"^{library}[<>=]", requirements, re.MULTILINE), library
    plugins = "".join(path.read_text() for path in (REPO / "plugins").rglob("*.py"))
    assert "import pglast" in plugins
    assert "import jmespath" in plugins
    assert "openssh-client [platform:dpkg]" in (REPO / "bindep.txt").read_text()


def test_ansible_builder_creates_the_build_context(tmp_path):
    context = tmp_path / "context"
    result = run(
        [str(BIN / "ansible-builder"), "create", "--file", "execution-environment.yml", "--context", str(context)],
        cwd=REPO,
        env=tool_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    containerfile = (context / "Dockerfile").read_text()
    assert 'ARG EE_BASE_IMAGE="docker.io/library/debian:trixie"' in containerfile
    assert 'ARG ANSIBLE_INSTALL_REFS="ansible-core==2.19.14 ansible-runner==2.4.3"' in containerfile
    assert 'ARG PKGMGR="/usr/bin/apt-get"' in containerfile
    assert "introspect --user-pip=requirements.txt --user-bindep=bindep.txt" in containerfile
    assert "RUN /output/scripts/check_ansible $PYCMD" in containerfile
    assert (context / "_build" / "requirements.txt").read_text() == (REPO / "requirements.txt").read_text()
    assert (context / "_build" / "bindep.txt").read_text() == (REPO / "bindep.txt").read_text()
    # No Galaxy stage: the collections come from the `ansible` package in requirements.txt.
    assert "ansible-galaxy" not in containerfile
    assert "ansible-core==2.19.14" in (REPO / "requirements-dev.txt").read_text()


def inventory_host_vars(environment, password_file):
    inventory = f"inventories/{environment}"
    command = [str(BIN / "ansible-inventory"), "-i", inventory, "--list", "--vault-password-file", password_file]
    listing = run(command, cwd=REPO, env=tool_env())
    assert listing.returncode == 0, listing.stderr
    hostvars = json.loads(listing.stdout)["_meta"]["hostvars"]
    assert len(hostvars) == 1
    return next(iter(hostvars.values()))


@pytest.fixture(scope="module")
def password_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vault") / "password"
    path.write_text(TEST_VAULT_PASSWORD)
    return str(path)


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_vault_is_encrypted_with_the_test_password_and_holds_the_example_keys(environment, password_file):
    group_vars = REPO / "inventories" / environment / "group_vars" / "all"
    assert (group_vars / "vault.yml").read_text().startswith("$ANSIBLE_VAULT;1.1;AES256\n")
    vault = group_vars / "vault.yml"
    view = run([str(BIN / "ansible-vault"), "view", "--vault-password-file", password_file, str(vault)])
    assert view.returncode == 0, view.stderr
    secrets = yaml.safe_load(view.stdout)
    example = yaml.safe_load((group_vars / "vault.yml.example").read_text())
    assert secrets == example
    assert all(str(value).startswith("CHANGE-ME") for value in secrets.values())


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_each_environment_deploys_the_shared_product(environment, password_file):
    product = REPO / "inventories" / environment / "group_vars" / "all" / "product.yml"
    assert product.is_symlink()
    assert product.resolve() == (REPO / "inventories" / "shared" / "product.yml").resolve()

    hostvars = inventory_host_vars(environment, password_file)
    # Every vault_* variable the product reads is in this environment's vault.
    shared = (REPO / "inventories" / "shared" / "product.yml").read_text()
    environment_file = (REPO / "inventories" / environment / "group_vars" / "all" / "main.yml").read_text()
    # (Lines that are comments are examples the product does not read, as the registry login.)
    read = "\n".join(line for line in (shared + environment_file).splitlines() if not line.lstrip().startswith("#"))
    for name in set(re.findall(r"\b(vault_[a-z_]+)", read)):
        assert name in hostvars, name
    assert hostvars["compose_app_name"] == "{{ product_name }}"
    assert [service["name"] for service in hostvars["compose_app_services"]] == ["backend", "worker", "frontend"]
    assert [service["name"] for service in hostvars["compose_app_data_services"]] == ["db"]
    (site,) = hostvars["nginx_sites"]
    locations = {location["path"]: location["upstream"] for location in site["locations"]}
    # The upstream names the rollout switches: <app>_<service>.
    assert locations == {"/": "{{ product_name }}_frontend", "/api/": "{{ product_name }}_backend"}


VALIDATE_ROLE_ARGUMENTS = """
- name: Check the inventory's role variables against the roles' argument specs
  hosts: docker_hosts
  gather_facts: false
  tasks:
    - name: Validate the variables of {{ item }}
      ansible.builtin.validate_argument_spec:
        argument_spec: "{{ (lookup('ansible.builtin.file', repo ~ '/roles/' ~ item ~ '/meta/argument_specs.yml')
          | from_yaml).argument_specs.main.options }}"
        provided_arguments: "{{ dict(names | zip(names | map('extract', hostvars[inventory_hostname]))) }}"
      vars:
        names: "{{ query('ansible.builtin.varnames', '^' ~ item ~ '_') }}"
      loop: [docker_host, nginx, firewall, compose_app]
"""


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_the_inventory_passes_the_roles_argument_specs(environment, password_file, tmp_path):
    """Each role's variables, templated as a deploy sees them, are what the role takes (its main argument spec)."""
    playbook = tmp_path / "validate.yml"
    playbook.write_text(VALIDATE_ROLE_ARGUMENTS)
    command = [str(BIN / "ansible-playbook"), str(playbook), "-i", f"inventories/{environment}", "-c", "local"]
    command += ["--vault-password-file", password_file, "-e", "product_release=1.0.0", "-e", f"repo={REPO}"]
    result = run(command, cwd=REPO, env=tool_env())
    assert result.returncode == 0, result.stdout[-4000:]
    assert result.stdout.count("ok: [") == 4, result.stdout[-4000:]
