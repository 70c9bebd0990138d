"""The test host the ansible-runner tests run their jobs against."""

import uuid

import pytest
from awx_harness import APT_CACHE, HOST_IMAGE, harness_playbook


@pytest.fixture(scope="session")
def test_host(tmp_path_factory):
    """A Debian 13 systemd container, the shared test-host definition, removed afterwards."""
    name = f"awxtest-{uuid.uuid4().hex[:8]}"
    work = tmp_path_factory.mktemp("awx-host")
    variables = {"berth_host_name": name, "berth_host_image": HOST_IMAGE, "berth_apt_cache_dir": APT_CACHE}
    try:
        started = harness_playbook(work, "systemd_host.yml", variables)
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-2000:]
        yield name
    finally:
        harness_playbook(work, "systemd_host_absent.yml", {"berth_host_name": name})
