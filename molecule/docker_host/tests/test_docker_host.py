"""docker_host, checked from outside the role: the engine, its options, a workload, the timer."""

import json

import pytest

DEBIAN13 = "docker_host-debian13"
DEBIAN12 = "docker_host-debian12"


def debian13(host):
    if host.backend.get_hostname() != DEBIAN13:
        pytest.skip("Debian 13 only")


def debian12(host):
    if host.backend.get_hostname() != DEBIAN12:
        pytest.skip("Debian 12 only")


def docker_info(host):
    return json.loads(host.check_output("docker info --format '{{json .}}'"))


def test_engine_is_active_and_enabled(host):
    debian13(host)
    docker = host.service("docker")
    assert docker.is_running
    assert docker.is_enabled


def test_docker_info_shows_the_hardened_options(host):
    debian13(host)
    info = docker_info(host)
    assert info["LoggingDriver"] == "local"
    assert info["LiveRestoreEnabled"] is True
    assert "berth.test=docker_host" in info["Labels"]


def test_daemon_json_content_and_mode(host):
    debian13(host)
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
    debian13(host)
    options = json.loads(host.check_output("docker network inspect bridge --format '{{json .Options}}'"))
    assert options["com.docker.network.bridge.enable_icc"] == "false"


def test_new_networks_come_from_the_configured_pool(host):
    debian13(host)
    host.run("docker network rm berth-verify-pool")
    try:
        host.check_output("docker network create berth-verify-pool")
        inspect = "docker network inspect berth-verify-pool --format '{{(index .IPAM.Config 0).Subnet}}'"
        subnet = host.check_output(inspect)
        assert subnet.startswith("172.30."), subnet
    finally:
        host.run("docker network rm berth-verify-pool")


def test_metrics_endpoint_answers(host):
    debian13(host)
    metrics = host.check_output("curl -fsS --max-time 5 http://127.0.0.1:9323/metrics")
    assert "engine_daemon_engine_info" in metrics


def test_compose_v2_answers(host):
    debian13(host)
    version = host.check_output("docker compose version --short")
    assert version.lstrip("v").startswith("2."), version


def test_container_from_the_outer_engine_publishes_a_port_that_answers(host):
    debian13(host)
    listing = host.check_output("curl -fsS --max-time 5 http://127.0.0.1:18080/")
    assert "Directory listing" in listing


def test_containers_run_without_new_privileges(host):
    debian13(host)
    status = host.check_output("docker exec berth-web grep NoNewPrivs /proc/1/status")
    assert status.split() == ["NoNewPrivs:", "1"]


def test_deploy_user_reaches_docker_through_the_group(host):
    debian13(host)
    assert "docker" in host.user("berth-deploy").groups
    result = host.run("runuser -u berth-deploy -- docker info --format '{{.ServerVersion}}'")
    assert result.rc == 0, result.stderr


def test_community_docker_python_dependencies(host):
    debian13(host)
    assert host.package("python3-docker").is_installed
    assert host.package("python3-requests").is_installed


def test_prune_timer_is_scheduled_and_its_service_works(host):
    debian13(host)
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
    debian13(host)
    source = host.file("/root/upstream-docker.sources").content_string
    assert "URIs: https://download.docker.com/linux/debian\n" in source
    assert "Suites: trixie\n" in source
    assert "Components: stable\n" in source
    assert "Architectures: amd64\n" in source
    assert "Signed-By: /etc/apt/keyrings/docker.asc\n" in source
    # apt parses the file (no network needed) and derives the repository's index from it.
    targets = host.check_output(
        "apt-get indextargets -o Dir::Etc::SourceList=/root/upstream-docker.sources "
        "-o Dir::Etc::SourceParts=/nonexistent --format '$(URI)'"
    )
    assert "https://download.docker.com/linux/debian/dists/trixie/stable/" in targets


def test_debian12_stopped_before_any_change(host):
    debian12(host)
    assert not host.package("docker.io").is_installed
    assert not host.file("/etc/docker/daemon.json").exists
    assert "docker" not in host.user("berth-deploy").groups
