"""berth.stack.lb_upstream's pure helpers: the upstream file a load balancer gets, the checks of its
parameters, the drain wait (clock driven by the test), the connection count (``ss`` output given), and
the rendered file against a real nginx's own configuration test, and the wait for a reload against a real
nginx master and its workers."""

import http.server
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from ansible_collections.berth.stack.plugins.module_utils import _nginx_upstream as upstreams
from ansible_collections.berth.stack.plugins.modules import lb_upstream

APP1 = {"address": "10.0.0.11", "port": 80}
APP2 = {"address": "10.0.0.12", "port": 80}


def params(**changes):
    base = {
        "name": "shop_fleet",
        "servers": [APP1, APP2],
        "down": [],
        "balance": "least_conn",
        "max_fails": 3,
        "fail_timeout": "10s",
        "keepalive": 16,
        "drain_timeout": 30.0,
        "reload_timeout": 30.0,
    }
    return {**base, **changes}


def test_a_drained_server_stays_listed_and_is_marked_down():
    content = upstreams.render_balanced_upstream(params(down=["10.0.0.12:80"]), "drained: app2")
    assert content.splitlines() == [
        "# drained: app2",
        "upstream shop_fleet {",
        "    least_conn;",
        "    server 10.0.0.11:80 max_fails=3 fail_timeout=10s;",
        "    server 10.0.0.12:80 max_fails=3 fail_timeout=10s down;",
        "    keepalive 16;",
        "}",
    ]
    assert upstreams.down_servers(content) == ["10.0.0.12:80"]


def test_round_robin_names_no_method_and_keepalive_zero_leaves_it_off():
    content = upstreams.render_balanced_upstream(params(balance="round_robin", keepalive=0), "c")
    assert "least_conn" not in content
    assert "round_robin" not in content
    assert "keepalive" not in content
    assert upstreams.down_servers(content) == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({}, None),
        ({"name": "shop fleet"}, "name='shop fleet': letters, digits"),
        ({"servers": []}, "servers=[]: an upstream needs at least one server"),
        ({"servers": [APP1, APP1]}, "servers: 10.0.0.11:80 listed more than once"),
        ({"servers": [{"address": "10.0.0.11;", "port": 80}]}, "servers.address='10.0.0.11;'"),
        ({"servers": [{"address": "10.0.0.11", "port": 0}]}, "servers.port=0: must be 1-65535"),
        ({"down": ["10.0.0.13:80"]}, "down=['10.0.0.13:80']: not among the servers"),
        ({"down": ["10.0.0.11:80", "10.0.0.12:80"]}, "every server would be down"),
        ({"max_fails": -1}, "max_fails=-1"),
        ({"fail_timeout": "10 s"}, "fail_timeout='10 s'"),
        ({"keepalive": -2}, "keepalive=-2"),
        ({"drain_timeout": -1.0}, "drain_timeout=-1.0"),
        ({"reload_timeout": 0.0}, "reload_timeout=0.0: must be above 0"),
    ],
)
def test_each_bad_parameter_is_named_with_its_value(changes, message):
    errors = upstreams.balanced_upstream_errors(params(**changes))
    if message is None:
        assert errors == []
    else:
        assert len(errors) == 1
        assert message in errors[0]


def test_the_drain_wait_ends_when_no_connection_is_left():
    clock = iter([0.0, 0.0, 0.25, 0.5, 0.5])
    counts = iter([2, 1, 0])
    result = lb_upstream.wait_drained(lambda: next(counts), 10, clock=lambda: next(clock), sleep=lambda _s: None)
    assert result == {"seconds": 0.5, "connections": 0}


def test_the_drain_wait_gives_up_at_its_timeout_with_the_connections_left():
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    result = lb_upstream.wait_drained(lambda: 3, 1.0, clock=lambda: now[0], sleep=sleep)
    assert result == {"seconds": 1.0, "connections": 3}


def test_connections_are_counted_per_server_from_ss():
    calls = []

    def run(argv):
        calls.append(argv)
        lines = {"10.0.0.12:80": "ESTAB 0 0 10.0.0.1:4242 10.0.0.12:80\nESTAB 0 0 10.0.0.1:4243 10.0.0.12:80\n"}
        return 0, lines.get(argv[-1], ""), ""

    assert lb_upstream.connections_to(run, ["10.0.0.12:80", "10.0.0.11:8080"]) == 2
    assert calls == [
        ["ss", "-Htn", "state", "established", "dst", "10.0.0.12:80"],
        ["ss", "-Htn", "state", "established", "dst", "10.0.0.11:8080"],
    ]


def test_a_failing_ss_is_an_error():
    with pytest.raises(OSError, match="ss failed: no netlink"):
        lb_upstream.connections_to(lambda _argv: (1, "", "no netlink"), ["10.0.0.12:80"])


def test_nginx_accepts_the_rendered_file(tmp_path: Path):
    upstream = tmp_path / "shop_fleet.conf"
    upstream.write_text(upstreams.render_balanced_upstream(params(down=["10.0.0.11:80"]), "test"))
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n    access_log off;\n    include {upstream};\n"
        "    server { listen 127.0.0.1:18999; location / { proxy_pass http://shop_fleet; } }\n}\n"
    )
    test = subprocess.run(
        ["nginx", "-t", "-q", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert test.returncode == 0, test.stderr


class Failed(Exception):
    pass


class FakeModule:
    """What apply() uses of AnsibleModule: its parameters and fail_json (raising, as exiting would)."""

    def __init__(self):
        self.params = {"test_command": ["nginx", "-t", "-q"], "reload_command": ["systemctl", "reload", "nginx"]}

    def fail_json(self, **result):
        raise Failed(result["msg"])


@pytest.mark.parametrize(
    ("failing", "commands"),
    [
        ("nginx -t -q", [["nginx", "-t", "-q"]]),
        (
            "systemctl reload nginx",
            [["nginx", "-t", "-q"], ["systemctl", "reload", "nginx"], ["systemctl", "reload", "nginx"]],
        ),
    ],
)
def test_a_refused_change_puts_the_previous_file_back(tmp_path: Path, failing, commands):
    path = tmp_path / "shop_fleet.conf"
    path.write_text("previous\n")
    seen = []

    def run(argv):
        seen.append(argv)
        # nginx tests and loads the new file; the reload after a failed one loads the previous file again.
        assert path.read_text() == ("new\n" if len(seen) < 3 else "previous\n")
        return (1, "", "refused") if " ".join(argv) == failing and len(seen) < 3 else (0, "", "")

    with pytest.raises(Failed, match=f"{failing} failed with the new .*refused.*previous file was put back"):
        lb_upstream.apply(FakeModule(), str(path), "previous\n", "new\n", run)
    assert path.read_text() == "previous\n"
    assert seen == commands
    assert [entry.name for entry in tmp_path.iterdir()] == ["shop_fleet.conf"]


def test_a_change_to_a_new_file_that_nginx_refuses_leaves_no_file(tmp_path: Path):
    path = tmp_path / "shop_fleet.conf"
    with pytest.raises(Failed):
        lb_upstream.apply(FakeModule(), str(path), None, "new\n", lambda _argv: (1, "", "refused"))
    assert not path.exists()


@pytest.fixture
def real_nginx(tmp_path: Path):
    """A real nginx master with two workers on 127.0.0.1:18998, proxying to a slow server on 18997 whose
    answer takes 3 s, so that a request can be held in flight across a reload."""

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(3)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *_args):
            pass

    slow = http.server.ThreadingHTTPServer(("127.0.0.1", 18997), Slow)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nworker_processes 2;\nevents {{}}\n"
        "http {\n    access_log off;\n"
        "    server { listen 127.0.0.1:18998; location / { proxy_pass http://127.0.0.1:18997; } }\n}\n"
    )
    base = ["nginx", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")]
    subprocess.run(base, check=True)
    pid_file = tmp_path / "nginx.pid"
    deadline = time.monotonic() + 10
    while len(upstreams.nginx_workers(lb_upstream.master_pid(pid_file) or -1)) < 2:
        assert time.monotonic() < deadline, "nginx started no workers"
        time.sleep(0.05)
    yield base, pid_file
    subprocess.run([*base, "-s", "stop"], check=False)
    slow.shutdown()


def test_the_reload_wait_ends_when_nginx_replaced_its_workers_even_while_an_old_one_finishes_a_request(real_nginx):
    base, pid_file = real_nginx
    master = lb_upstream.master_pid(pid_file)
    before = upstreams.nginx_workers(master)
    assert sorted(before.values()) == [upstreams.WORKER_TITLE] * 2
    in_flight = threading.Thread(target=lambda: urllib.request.urlopen("http://127.0.0.1:18998/", timeout=10).read())
    in_flight.start()
    time.sleep(0.5)  # the request has reached an old worker and waits for the slow server
    subprocess.run([*base, "-s", "reload"], check=True)
    seconds = lb_upstream.wait_reloaded(lambda: upstreams.nginx_workers(master), set(before), 10)
    now = upstreams.nginx_workers(master)
    assert seconds is not None and seconds < 2.5
    # One old worker is still there, finishing the slow request; it takes no new connection.
    assert [title for pid, title in now.items() if pid in before] == [f"{upstreams.WORKER_TITLE} is shutting down"]
    assert len([pid for pid in now if pid not in before]) == 2
    in_flight.join()


def test_the_reload_wait_gives_up_when_no_reload_happened(real_nginx):
    _base, pid_file = real_nginx
    master = lb_upstream.master_pid(pid_file)
    before = set(upstreams.nginx_workers(master))
    assert lb_upstream.wait_reloaded(lambda: upstreams.nginx_workers(master), before, 0.5) is None


def test_an_unreadable_pid_file_gives_no_master(tmp_path: Path):
    assert lb_upstream.master_pid(tmp_path / "absent.pid") is None
    (tmp_path / "bad.pid").write_text("nginx\n")
    assert lb_upstream.master_pid(tmp_path / "bad.pid") is None
