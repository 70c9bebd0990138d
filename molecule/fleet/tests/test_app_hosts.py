"""The app hosts after the scenario: side_effect.yml rolls the fleet back to v1, then v3 and v4 fail their
gate on fleet-3-app, which keeps v1; fleet-1-app switched to v3, then to v4, and was reverted to v3."""

import json

testinfra_hosts = ["ansible://fleet-1-app", "ansible://fleet-3-app"]

EXPECTED_RELEASE = {"fleet-1-app": "v3", "fleet-3-app": "v1"}


def test_each_app_host_serves_the_release_the_failed_deploys_left_it(host):
    name = host.backend.get_hostname()
    state = json.loads(host.file("/srv/berth/demo/state.json").content_string)
    assert state["active"]["release"] == EXPECTED_RELEASE[name]
