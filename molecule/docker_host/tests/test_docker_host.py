"""docker_host on Debian 13, checked from outside the role: the engine, its options, a workload, the timer."""

import json

# Debian 12 stops before any change; molecule/docker_host/tests/test_debian12_refusal.py checks that.
testinfra_hosts = ["ansible://docker_host-debian13"]


def docker_info(host):
    return json.loads(host.check_output("docker info --format '{{json .}}'"))


def test_engine_is_active_and_enabled(host):
    docker = host.service("docker")
    assert docker.is_running
    assert docker.is_enabled


def test_docker_info_shows_the_hardened_options(host):
    info = docker_info(host)
    assert info["LoggingDriver"] == "local"
    assert info["LiveRestoreEnabled"] is True
    assert "berth.test=docker_host" in info["Labels"]


def test_daemon_json_content_and_mode(host):
    daemon_json = host.file("/etc/docker/daemon.json")
    assert daemon_json.mode == 0o644
    assert daemon_json.user == "root"
    config = json.loads(daemon_json.content_string)
    assert config["log-opts"] == {"max-size": "20m", "max-file": "5"}
    assert config["userland-proxy"] is False
    assert config["icc"] is False
    assert config["no-new-privileges"] is True
    assert config["metrics-addr"] == "127.0.0.1:9323"
    assert "iptables" not in config


def test_icc_is_off_on_the_default_bridge(host):
    options = json.loads(host.check_output("docker network inspect bridge --format '{{json .Options}}'"))
    assert options["com.docker.network.bridge.enable_icc"] == "false"


def test_new_networks_come_from_the_configured_pool(host):
    host.run("docker network rm berth-verify-pool")
    try:
        host.check_output("docker network create berth-verify-pool")
        inspect = "docker network inspect berth-verify-pool --format '{{(index .IPAM.Config 0).Subnet}}'"
        subnet = host.check_output(inspect)
        assert subnet.startswith("172.30."), subnet
    finally:
        host.run("docker network rm berth-verify-pool")


def test_metrics_endpoint_answers(host):
    metrics = host.check_output("curl -fsS --max-time 5 http://127.0.0.1:9323/metrics")
    assert "engine_daemon_engine_info" in metrics


def test_compose_v2_answers(host):
    version = host.check_output("docker compose version --short")
    assert version.lstrip("v").startswith("2."), version


def test_container_from_the_outer_engine_publishes_a_port_that_answers(host):
    listing = host.check_output("curl -fsS --max-time 5 http://127.0.0.1:18080/")
    assert "Directory listing" in listing


def test_containers_run_without_new_privileges(host):
    status = host.check_output("docker exec berth-web grep NoNewPrivs /proc/1/status")
    assert status.split() == ["NoNewPrivs:", "1"]


def test_deploy_user_reaches_docker_through_the_group(host):
    assert "docker" in host.user("berth-deploy").groups
    result = host.run("runuser -u berth-deploy -- docker info --format '{{.ServerVersion}}'")
    assert result.rc == 0, result.stderr


def test_community_docker_python_dependencies(host):
    assert host.package("python3-docker").is_installed
    assert host.package("python3-requests").is_installed


def test_prune_timer_is_scheduled_and_its_service_works(host):
    timer = host.service("berth-docker-prune.timer")
    assert timer.is_enabled
    assert timer.is_running
    assert "until=168h" in host.file("/etc/systemd/system/berth-docker-prune.service").content_string
    host.check_output("systemctl start berth-docker-prune.service")
    result = host.check_output("systemctl show berth-docker-prune.service --property Result --value")
    assert result == "success"
    # The image the running container uses is in use, so pruning keeps it.
    assert host.run("docker image inspect berth/debian13-systemd:latest").rc == 0


def test_upstream_source_template_is_a_valid_signed_deb822_source(host):
    source = host.file("/root/upstream-docker.sources").content_string
    assert "URIs: https://download.docker.com/linux/debian\n" in source
    assert "Suites: trixie\n" in source
    assert "Components: stable\n" in source
    assert "Architectures: amd64\n" in source
    assert "Signed-By: /etc/apt/keyrings/docker.asc\n" in source
    # apt parses the file and derives the repository's indexes from it; --no-release-info because
    # the repository's Release file was never downloaded (no network to it here).
    targets = host.check_output(
        "apt-get indextargets -o Dir::Etc::SourceList=/root/upstream-docker.sources "
        "-o Dir::Etc::SourceParts=/nonexistent --no-release-info --format '$(URI)'"
    )
    assert "https://download.docker.com/linux/debian/dists/trixie/stable/" in targets


def test_root_is_logged_in_to_the_private_registry_in_a_root_only_file(host):
    config = host.file("/root/.docker/config.json")
    assert (config.user, config.group, config.mode) == ("root", "root", 0o600)
    assert host.file("/root/.docker").mode == 0o700
    assert list(json.loads(config.content_string)["auths"]) == ["localhost:5000"]
    # The registry refuses a client without the login; root's client gets as far as the missing image.
    anonymous = host.run("docker --config /tmp/berth-no-login pull localhost:5000/berth/absent:1")
    assert anonymous.rc != 0 and "no basic auth credentials" in anonymous.stderr, anonymous.stderr
    logged_in = host.run("docker pull localhost:5000/berth/absent:1")
    assert logged_in.rc != 0 and "manifest unknown" in logged_in.stderr, logged_in.stderr
