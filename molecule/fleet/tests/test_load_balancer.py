"""The load balancer after the scenario: every app host in rotation, no fleet lock left."""

testinfra_hosts = ["ansible://fleet-lb"]


def test_the_load_balancer_lists_both_app_hosts_up_with_passive_checks(host):
    content = host.file("/etc/nginx/berth/upstreams/demo_fleet.conf").content_string
    servers = [line.split() for line in content.splitlines() if line.strip().startswith("server ")]
    assert "least_conn;" in content
    assert len(servers) == 2
    assert all(line[2:] == ["max_fails=3", "fail_timeout=10s;"] for line in servers)
    assert host.run("nginx -t -q").rc == 0


def test_the_load_balancer_answers_from_both_app_hosts(host):
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
    assert host.check_output("ls -A /var/lib/berth/fleet-locks") == ""
