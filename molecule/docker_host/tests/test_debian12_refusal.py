"""docker_host on Debian 12 with the distribution source: refused before anything changed."""

testinfra_hosts = ["ansible://docker_host-debian12"]


def test_debian12_stopped_before_any_change(host):
    assert not host.package("docker.io").is_installed
    assert not host.file("/etc/docker/daemon.json").exists
    assert "docker" not in host.user("berth-deploy").groups
