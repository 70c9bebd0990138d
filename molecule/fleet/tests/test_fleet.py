"""The fleet after its scenario, checked from outside. side_effect.yml ends with fleet-1-app and the
worker on v3 (v4 was reverted on both), fleet-3-app on v2 (v3 and v4 failed their gate there)."""

import json

import pytest


def name(host):
    return host.ansible.get_variables()["inventory_hostname"]


def only(host, *names):
    if name(host) not in names:
        pytest.skip(f"checks {', '.join(names)}")


def active_release(host):
    return json.loads(host.file("/srv/berth/demo/state.json").content_string)["active"]["release"]


def test_the_worker_only_host_runs_no_nginx_and_listens_on_no_web_port(host):
    only(host, "fleet-2-worker")
    assert not host.package("nginx").is_installed
    assert not host.socket("tcp://0.0.0.0:80").is_listening
    assert not host.socket("tcp://0.0.0.0:443").is_listening


def test_the_worker_only_host_runs_the_worker_of_its_last_release(host):
    only(host, "fleet-2-worker")
    assert active_release(host) == "v3"
    images = host.check_output(
        "docker ps --filter label=com.docker.compose.service=worker --filter status=running --format '{{.Image}}'"
    )
    assert images.split() == ["berth/demo-worker:v3"]


@pytest.mark.parametrize(("app_host", "release"), [("fleet-1-app", "v3"), ("fleet-3-app", "v2")])
def test_each_app_host_serves_the_release_the_failed_deploys_left_it(host, app_host, release):
    only(host, app_host)
    assert active_release(host) == release


def test_the_load_balancer_lists_both_app_hosts_up_with_passive_checks(host):
    only(host, "fleet-lb")
    content = host.file("/etc/nginx/berth/upstreams/demo_fleet.conf").content_string
    servers = [line.split() for line in content.splitlines() if line.strip().startswith("server ")]
    assert "least_conn;" in content
    assert len(servers) == 2
    assert all(line[2:] == ["max_fails=3", "fail_timeout=10s;"] for line in servers)
    assert host.run("nginx -t -q").rc == 0


def test_the_load_balancer_answers_from_both_app_hosts(host):
    only(host, "fleet-lb")
    script = (
        "import urllib.request\n"
        "seen = set()\n"
        "for _ in range(20):\n"
        "    request = urllib.request.Request('http://127.0.0.1/healthz', headers={'Host': 'fleet.localhost'})\n"
        "    with urllib.request.urlopen(request, timeout=5) as response:\n"
        "        seen.add(response.headers['X-Berth-Host'])\n"
        "print(' '.join(sorted(seen)))\n"
    )
    assert host.check_output(f'python3 -c "{script}"').split() == ["fleet-1-app", "fleet-3-app"]


def test_no_fleet_lock_is_left(host):
    only(host, "fleet-lb")
    assert host.check_output("ls -A /var/lib/berth/fleet-locks") == ""
