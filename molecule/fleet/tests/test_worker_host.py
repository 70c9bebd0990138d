"""The worker-only host after the scenario (side_effect.yml leaves the worker on v3: v4 was reverted)."""

import json

testinfra_hosts = ["ansible://fleet-2-worker"]


def test_the_worker_only_host_runs_no_nginx_and_listens_on_no_web_port(host):
    assert not host.package("nginx").is_installed
    assert not host.socket("tcp://0.0.0.0:80").is_listening
    assert not host.socket("tcp://0.0.0.0:443").is_listening


def test_the_worker_only_host_runs_the_worker_of_its_last_release(host):
    assert json.loads(host.file("/srv/berth/demo/state.json").content_string)["active"]["release"] == "v3"
    images = host.check_output(
        "docker ps --filter label=com.docker.compose.service=worker --filter status=running --format '{{.Image}}'"
    )
    assert images.split() == ["berth/demo-worker:v3"]
