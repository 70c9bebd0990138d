"""nginx sites on their own ports (nginx_sites[].listen_port), through the role's own preflight and templates.

ansible-playbook runs the role's preflight on this host (include_role tasks_from, so the role's defaults
and vars are the real ones), then renders nginx.conf and the site files as the role would. A bad port is
refused naming the site and the port; a good one gives the site its own listen lines and the port a
default server, and leaves the other sites on nginx_http_port. The seed_systems Molecule scenario serves
a site on 6666 beside two on 80 on a real nginx.
"""

from pathlib import Path

import pytest
from role_tasks import run_role_tasks

TEMPLATES = Path(__file__).resolve().parents[2] / "roles" / "nginx" / "templates"


def sites(**app_site) -> list[dict]:
    return [
        {
            "name": "orders",
            "server_name": ["orders.test"],
            "locations": [{"path": "/api/", "upstream": "orders_backend"}],
        },
        {
            "name": "app",
            "server_name": ["app.test"],
            "locations": [{"path": "/", "upstream": "app_frontend"}],
            **app_site,
        },
    ]


def render(tmp_path: Path, nginx_sites: list[dict]):
    """ansible-playbook's completed process; nginx.conf and each site's file are written to tmp_path."""
    after = [
        {
            "name": "Render the main configuration",
            "ansible.builtin.template": {
                "src": str(TEMPLATES / "nginx.conf.j2"),
                "dest": str(tmp_path / "nginx.conf"),
                "mode": "0644",
            },
        },
        {
            "name": "Render each site",
            "ansible.builtin.template": {
                "src": str(TEMPLATES / "site.conf.j2"),
                "dest": str(tmp_path / "{{ item }}.conf"),
                "mode": "0644",
            },
            "loop": [site["name"] for site in nginx_sites],
        },
    ]
    variables = {"nginx_sites": nginx_sites, "nginx_listen_ipv6": False, "nginx_http2": False}
    return run_role_tasks(tmp_path, "preflight.yml", variables, after=after, role="berth.stack.nginx")


def listens(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip().startswith("listen ")]


def test_a_site_on_its_own_port_listens_there_and_the_port_gets_a_default_server(tmp_path):
    completed = render(tmp_path, sites(listen_port=6666))
    assert completed.returncode == 0, completed.stdout[-3000:]
    assert listens(tmp_path / "app.conf") == ["listen 6666;"]
    assert listens(tmp_path / "orders.conf") == ["listen 80;"]
    main = listens(tmp_path / "nginx.conf")
    assert main.count("listen 80 default_server;") == 1
    assert main.count("listen 6666 default_server;") == 1
    assert not [line for line in main if "443" in line], main


def test_a_tls_site_on_its_own_port_redirects_there_from_the_http_port(tmp_path):
    completed = render(tmp_path, sites(listen_port=8443, tls={"source": "self_signed"}))
    assert completed.returncode == 0, completed.stdout[-3000:]
    site = (tmp_path / "app.conf").read_text()
    assert listens(tmp_path / "app.conf") == ["listen 80;", "listen 8443 ssl;"]
    assert "return 308 https://$host:8443$request_uri;" in site
    main = listens(tmp_path / "nginx.conf")
    assert main.count("listen 8443 ssl default_server;") == 1
    assert not [line for line in main if "443 ssl" in line and "8443" not in line], main


@pytest.mark.parametrize(
    ("app_site", "why"),
    [
        ({"listen_port": 70000}, "listen_port 70000"),
        ({"listen_port": 0}, "listen_port 0"),
        ({"listen_port": 8502}, "listen_port 8502"),  # nginx_status_port, a 127.0.0.1 server
        ({"listen_port": 8503}, "listen_port 8503"),  # nginx_placeholder_port
        # Plain HTTP and TLS on one port: the TLS site's redirect server holds port 80.
        ({"listen_port": 80, "tls": {"source": "self_signed"}}, "listen_port 80"),
    ],
)
def test_a_bad_port_is_refused_naming_the_site_and_the_port(tmp_path, app_site, why):
    completed = render(tmp_path, sites(**app_site))
    assert completed.returncode != 0
    output = " ".join(completed.stdout.split())
    assert f"nginx_sites 'app' has {why}" in output, completed.stdout[-3000:]
    assert "Nothing was changed." in output
    assert not (tmp_path / "nginx.conf").exists()


def test_a_plain_site_on_the_tls_port_of_another_site_is_refused(tmp_path):
    nginx_sites = sites(listen_port=443)
    nginx_sites[0]["tls"] = {"source": "self_signed"}
    completed = render(tmp_path, nginx_sites)
    assert completed.returncode != 0
    assert "nginx_sites 'app' has listen_port 443" in " ".join(completed.stdout.split()), completed.stdout[-3000:]
