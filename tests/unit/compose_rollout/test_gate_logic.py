"""compose_rollout's pure helpers: consecutive-success counting, body assertions, state history, upstream text."""

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ansible_collections.berth.stack.plugins.module_utils import _health as health
from ansible_collections.berth.stack.plugins.module_utils import _nginx_upstream as upstreams
from ansible_collections.berth.stack.plugins.module_utils import _release_state as states
from conftest import port, selector_directives, self_signed_certificate


class FakeClock:
    """Time for probe_until without sleeping: each sleep advances the clock."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def scripted(outcomes):
    answers = iter(outcomes)

    def check():
        return {"ok": next(answers)}

    return check


@pytest.mark.parametrize(
    ("outcomes", "successes", "passed", "attempts"),
    [
        ([True, True, True], 3, True, 3),
        ([True, False, True, True, True], 3, True, 5),  # a failure resets the streak
        ([False] * 20, 1, False, 11),  # interval 1, timeout 10: attempts at t=0..10
        ([True, True, False] * 10, 3, False, 11),
        ([False, True], 1, True, 2),
    ],
)
def test_probe_until_counts_consecutive_successes(outcomes, successes, passed, attempts):
    clock = FakeClock()
    result = health.probe_until(scripted(outcomes), successes, interval=1, timeout=10, clock=clock, sleep=clock.sleep)
    assert result[:2] == (passed, attempts)


@pytest.mark.parametrize(
    ("outcomes", "failures", "passed", "attempts"),
    [
        ([False, False, False, True], 3, False, 3),  # judged in 3 attempts, not at the 10 s timeout
        ([False, False, True, False, False, True, True, True], 3, True, 8),  # a success resets the count
        ([False] * 20, None, False, 11),  # no threshold: only the timeout ends it
    ],
)
def test_probe_until_fails_after_consecutive_failures(outcomes, failures, passed, attempts):
    clock = FakeClock()
    result = health.probe_until(
        scripted(outcomes), 3, interval=1, timeout=10, clock=clock, sleep=clock.sleep, failures=failures
    )
    assert result[:2] == (passed, attempts)


def test_probe_until_does_not_count_failures_inside_the_boot_grace():
    clock = FakeClock()
    outcomes = [False] * 6 + [True] * 3
    result = health.probe_until(
        scripted(outcomes), 3, interval=1, timeout=20, clock=clock, sleep=clock.sleep, failures=2, count_failures_from=5
    )
    assert result[:2] == (True, 9)
    clock = FakeClock()
    result = health.probe_until(
        scripted([False] * 20),
        3,
        interval=1,
        timeout=20,
        clock=clock,
        sleep=clock.sleep,
        failures=2,
        count_failures_from=5,
    )
    # Attempts at t=0..4 are in the grace; t=5 and t=6 are the two failures that count.
    assert result[:2] == (False, 7)


def test_probe_until_stops_at_once_when_the_container_stopped():
    clock = FakeClock()
    stopped = iter([None, "a container stopped: exited"])
    result = health.probe_until(
        scripted([False] * 20), 3, interval=1, timeout=60, clock=clock, sleep=clock.sleep, abort=lambda: next(stopped)
    )
    assert result[:2] == (False, 2)
    assert "a container stopped: exited" in result[2]["reason"]


@pytest.fixture(scope="module")
def answering_server():
    """A real HTTP server on 127.0.0.1 whose answer per path the tests choose."""
    answers = {
        "/healthy": (200, {"status": "ok", "database": "connected"}),
        "/broken-db": (200, {"status": "ok", "database": "disconnected"}),
        "/error": (500, {"status": "error"}),
        "/text": (200, "plain text"),
        "/redirect": (302, {}),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            status, body = answers[self.path]
            raw = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(status)
            if status == 302:
                self.send_header("Location", "/healthy")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port(18279)), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port(18279)}"
    server.shutdown()


EXPRESSION = "status == 'ok' && database == 'connected'"


@pytest.mark.parametrize(
    ("path", "expression", "ok", "reason"),
    [
        ("/healthy", EXPRESSION, True, None),
        ("/broken-db", EXPRESSION, False, "is false on the body"),
        ("/broken-db", None, True, None),  # a status-only probe cannot see v3's defect
        ("/error", EXPRESSION, False, "status 500, expected 200"),
        ("/text", EXPRESSION, False, "body is not JSON"),
        ("/redirect", None, False, "status 302, expected 200"),
    ],
)
def test_probe_judges_status_and_body(answering_server, path, expression, ok, reason):
    result = health.probe(answering_server + path, expression=expression, timeout=2)
    assert result["ok"] is ok
    if reason:
        assert reason in result["reason"]


def test_probe_reports_a_refused_connection():
    result = health.probe(f"http://127.0.0.1:{port(18298)}/api/health", timeout=2)
    assert result["ok"] is False
    assert "request failed" in result["reason"]


def test_invalid_expression_names_it():
    with pytest.raises(ValueError, match="invalid JMESPath expression 'status =='"):
        health.compile_expression("status ==")


def test_release_history_keeps_the_newest_and_moves_a_rollback_to_the_front():
    state = states.empty_state("demo")
    for number in range(1, 5):
        pruned = states.record_release(state, f"r{number}", "blue", f"/d/r{number}", {}, f"t{number}", keep=3)
    assert [item["release"] for item in state["releases"]] == ["r4", "r3", "r2"]
    assert [item["release"] for item in pruned] == ["r1"]
    states.record_release(state, "r2", "green", "/d/r2", {}, "t5", keep=3)
    assert [item["release"] for item in state["releases"]] == ["r2", "r4", "r3"]
    assert state["active"] == {"color": "green", "release": "r2", "since": "t5"}


def test_next_color_alternates_and_starts_blue():
    assert states.next_color(None) == "blue"
    assert states.next_color("blue") == "green"
    assert states.next_color("green") == "blue"


def test_state_file_round_trip_and_refusals(tmp_path):
    path = tmp_path / "demo" / "state.json"
    assert states.load_state(str(path), "demo") == states.empty_state("demo")
    state = states.empty_state("demo")
    states.record_release(state, "r1", "blue", "/d/r1", {"backend": {"image_id": "sha256:1"}}, "t1", keep=5)
    states.save_state(str(path), state)
    assert states.load_state(str(path), "demo") == state
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    with pytest.raises(ValueError, match="does not hold the state of app 'other'"):
        states.load_state(str(path), "other")
    path.write_text("{broken")
    with pytest.raises(ValueError, match="is not valid JSON"):
        states.load_state(str(path), "demo")


def test_upstream_file_follows_the_contract(tmp_path):
    content = upstreams.render_upstream("demo_backend", [18220, 18221], keepalive=16, comment="release r2")
    assert content == (
        "# release r2\n"
        "upstream demo_backend {\n"
        "    server 127.0.0.1:18220 max_fails=0;\n"
        "    server 127.0.0.1:18221 max_fails=0;\n"
        "    keepalive 16;\n"
        "}\n"
    )
    assert upstreams.upstream_ports(content) == [18220, 18221]
    path = str(tmp_path / "demo_backend.conf")
    upstreams.write_atomically(path, content)
    assert oct((tmp_path / "demo_backend.conf").stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["demo_backend.conf"]
    upstreams.restore(path, None)
    assert not (tmp_path / "demo_backend.conf").exists()


def test_an_upstream_file_with_color_groups_reads_back_block_by_block():
    groups = [
        upstreams.render_upstream(f"demo_backend__{color}", [port]) for color, port in (("blue", 1), ("green", 2))
    ]
    placeholder = "upstream demo_backend {\n    server 127.0.0.1:8503 max_fails=0;\n    keepalive 16;\n}"
    content = upstreams.render_upstream_file([placeholder, *groups], "first line\nsecond line")
    assert content.startswith("# first line\n# second line\nupstream demo_backend {\n")
    blocks = upstreams.upstream_blocks(content)
    assert list(blocks) == ["demo_backend", "demo_backend__blue", "demo_backend__green"]
    assert blocks["demo_backend"] == placeholder
    assert [upstreams.upstream_ports(blocks[name]) for name in blocks] == [[8503], [1], [2]]
    # Read back and written again, a file does not change: a rollout that changes no port writes nothing.
    assert upstreams.render_upstream_file(list(blocks.values()), "first line\nsecond line") == content


@pytest.mark.parametrize(
    ("markers", "selected"),
    [({}, None), ({"blue": ""}, "blue"), ({"green": "x"}, "green"), ({"blue": "", "green": ""}, "green")],
)
def test_green_wins_when_both_markers_exist_as_in_the_site_template(markers, selected):
    assert upstreams.selected_color(markers) == selected


def test_the_selector_tests_each_marker_and_the_dump_check_finds_them_but_not_in_comments():
    lines = selector_directives("demo_backend", "/etc/nginx/up")
    assert lines == [
        "set $berth_upstream_demo_backend demo_backend;",
        "if (-f /etc/nginx/up/demo_backend.blue) { set $berth_upstream_demo_backend demo_backend__blue; }",
        "if (-f /etc/nginx/up/demo_backend.green) { set $berth_upstream_demo_backend demo_backend__green; }",
    ]
    dump = "# configuration file /etc/nginx/nginx.conf:\nserver {\n    " + "\n    ".join(lines) + "\n}\n"
    assert upstreams.dump_tests_marker(dump, "/etc/nginx/up/demo_backend.green")
    assert not upstreams.dump_tests_marker(dump, "/etc/nginx/up/demo_frontend.green")
    assert not upstreams.dump_tests_marker("# if (-f /x/a.blue) { }\n", "/x/a.blue")
    assert upstreams.dumped_upstreams("upstream a__blue {\n}\n  upstream b {\n}\n") == {"a__blue", "b"}


def test_markers_move_by_rename_and_removal_and_leave_no_temporary_file(tmp_path):
    blue, green = tmp_path / "demo_backend.blue", tmp_path / "demo_backend.green"
    blue.write_text("blue\n")
    upstreams.set_markers({str(green): "green\n", str(blue): None})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["demo_backend.green"]
    assert green.read_text() == "green\n"
    assert oct(green.stat().st_mode & 0o777) == "0o644"
    # A marker that cannot be put in place (a directory holds its name) fails, leaving no temporary file.
    blue.mkdir()
    (blue / "keep").write_text("")
    with pytest.raises(OSError):
        upstreams.set_markers({str(blue): "blue\n", str(green): None})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["demo_backend.blue", "demo_backend.green"]


@pytest.fixture
def tls_server(tmp_path):
    """A real HTTPS server on 127.0.0.1 with a self-signed certificate for site.example.test, recording the
    SNI name and the Host header of each request."""
    certificate = self_signed_certificate(tmp_path, "site", "site.example.test")
    key = tmp_path / "site.key"
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(("host", self.headers["Host"]))
            raw = json.dumps({"status": "ok"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args):
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    context.sni_callback = lambda _socket, name, _context: seen.append(("sni", name))
    server = ThreadingHTTPServer(("127.0.0.1", port(18278)), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"url": f"https://127.0.0.1:{port(18278)}/health", "certificate": str(certificate), "seen": seen}
    server.shutdown()


def test_https_probe_sends_the_name_as_sni_and_host_and_trusts_the_sites_own_certificate(tls_server):
    tls = {"server_name": "site.example.test", "ca_file": tls_server["certificate"]}
    headers = {"Host": "site.example.test"}
    result = health.probe(tls_server["url"], expression="status == 'ok'", headers=headers, timeout=5, tls=tls)
    assert result["ok"] is True, result
    assert tls_server["seen"] == [("sni", "site.example.test"), ("host", "site.example.test")]


def test_https_probe_without_the_sites_certificate_fails_verification(tls_server):
    # The system's CAs do not know a self-signed certificate.
    result = health.probe(tls_server["url"], timeout=5, tls={"server_name": "site.example.test"})
    assert result["ok"] is False
    assert "CERTIFICATE_VERIFY_FAILED" in result["reason"]
