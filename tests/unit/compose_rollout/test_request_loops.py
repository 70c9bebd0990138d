"""The request loops of the compose_app scenario and of bench/rollout.py count the requests they retry.

Both retry once on a new connection when a reused keep-alive connection was closed before an answer
(nginx closes idle ones on reload). The server here is a real HTTP/1.1 server on 127.0.0.1 that
closes every connection after one answer without saying so, as nginx's old workers do.
"""

import importlib.util
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import REPO, port

PORT = port(18278)


@pytest.fixture(scope="module")
def closing_server():
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            raw = json.dumps({"status": "ok", "version": "v1"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
            self.close_connection = True  # no "Connection: close": the client finds out on its next request

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield
    server.shutdown()


def test_the_scenario_request_loop_reports_its_retries(closing_server, tmp_path):
    out = tmp_path / "loop.json"
    argv = [sys.executable, str(REPO / "molecule/compose_app/files/request_loop.py"), "--port", str(PORT)]
    argv += ["--max-requests", "5", "--max-seconds", "10", "--stop-file", str(tmp_path / "stop"), "--out", str(out)]
    subprocess.run(argv, check=True, capture_output=True, timeout=30)
    summary = json.loads(out.read_text())
    assert {"requests", "failed", "failures", "versions", "seconds"} <= set(summary)
    assert summary["requests"] == 5
    assert summary["failed"] == 0
    # Every request after the first found its connection closed and went out a second time.
    assert summary["retried"] == 4
    assert summary["versions"] == ["v1"]


def test_the_benchmark_load_counts_a_retried_request(closing_server):
    spec = importlib.util.spec_from_file_location("bench_rollout", REPO / "bench" / "rollout.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return_value = bench.Load._get(None, PORT)
    assert return_value[0] == 200
    assert return_value[2] is False
    status, _connection, retried = bench.Load._get(return_value[1], PORT)
    assert (status, retried) == (200, True)
