"""Probes through nginx for a site with TLS at nginx: the test nginx serves the app on a second server,
``listen ... ssl`` with a self-signed certificate for TLS_NAME, as the nginx role serves a site with
``tls``. The module connects to 127.0.0.1, sends the site's name as SNI and Host, and verifies nginx's
certificate for that name against the site's own certificate, which it reads from ``nginx -T``."""

from conftest import APP, NGINX_TLS_PORT, TLS_NAME, served_version

TLS_URL = f"https://127.0.0.1:{NGINX_TLS_PORT}"


def nginx_gates(result):
    return [gate for gate in result["gates"] if gate["gate"] == "nginx"]


def test_a_tls_site_is_probed_over_https_by_its_name_and_verified_against_its_own_certificate(
    rollout, release, baseline
):
    baseline("r1")
    result = rollout(release("t1", "v2"), "t1", nginx_url=TLS_URL, nginx_host_header=TLS_NAME)
    assert not result.get("failed"), result.get("msg")
    gates = nginx_gates(result)
    assert gates and all(gate["passed"] and gate["url"].startswith(f"{TLS_URL}/") for gate in gates), gates
    assert served_version() == "v2"


def test_a_certificate_that_is_not_the_sites_fails_the_nginx_gate_and_switches_back(rollout, release, nginx, baseline):
    baseline("r1")
    other = nginx.make_certificate("other", TLS_NAME)
    result = rollout(release("t2", "v2"), "t2", nginx_url=TLS_URL, nginx_host_header=TLS_NAME, nginx_ca_file=str(other))
    assert result["failed"]
    assert "switched back to the previous upstreams" in result["msg"]
    assert "CERTIFICATE_VERIFY_FAILED" in result["failed_gate"]["last"]["reason"], result["failed_gate"]
    assert served_version() == "v1"


def test_a_name_the_certificate_is_not_for_fails_verification(rollout, release, nginx, baseline):
    """The certificate is trusted, but not for this name: the hostname check is on."""
    baseline("r1")
    ca_file = str(nginx.prefix / "tls.crt")
    result = rollout(
        release("t3", "v2"), "t3", nginx_url=TLS_URL, nginx_host_header="other.example.test", nginx_ca_file=ca_file
    )
    assert result["failed"]
    assert "Hostname mismatch" in result["failed_gate"]["last"]["reason"], result["failed_gate"]
    assert served_version() == "v1"


def test_https_to_a_name_no_tls_server_has_is_refused_before_the_reload(rollout, release, nginx, baseline):
    baseline("r1")
    saved = (nginx.upstreams / f"{APP}_backend.conf").read_text()
    result = rollout(release("t4", "v2"), "t4", nginx_url=TLS_URL, nginx_host_header="nowhere.example.test")
    assert result["failed"]
    assert "shows no server that listens with ssl and has server_name nowhere.example.test" in result["msg"]
    assert "previous files restored, traffic untouched" in result["msg"]
    assert (nginx.upstreams / f"{APP}_backend.conf").read_text() == saved
    assert served_version() == "v1"


def test_https_without_a_host_header_is_refused_naming_the_options(rollout, release):
    result = rollout(release("t5", "v2"), "t5", nginx_url=TLS_URL)
    assert result["failed"]
    assert f"nginx_url='{TLS_URL}': an https URL needs nginx_host_header" in result["msg"]
