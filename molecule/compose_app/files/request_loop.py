"""A bounded request loop through nginx during a rollout, on one keep-alive connection: at most
--max-requests requests and --max-seconds seconds, or until --stop-file appears. With --post-path,
every other request is a POST there (a JSON note, answered 201). Prints a JSON summary: how many
requests failed (another status or no answer), how many were retried on a new connection, how many
were POSTs, and the versions served, in order. With --tls-ca, it speaks HTTPS, sends the Host
header's name as SNI and verifies the certificate for it against that CA (a proxy in front of nginx)."""

import argparse
import http.client
import json
import os
import ssl
import time

parser = argparse.ArgumentParser()
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=80)
parser.add_argument("--path", default="/api/health")
parser.add_argument("--post-path", default="")
parser.add_argument("--host-header", default="demo.localhost")
parser.add_argument("--max-requests", type=int, default=20000)
parser.add_argument("--max-seconds", type=float, default=180)
parser.add_argument("--stop-file", default="/run/berth-request-loop.stop")
parser.add_argument("--out", default="/run/berth-request-loop.json")
parser.add_argument("--tls-ca", default="")
args = parser.parse_args()


class NamedTLSConnection(http.client.HTTPSConnection):
    """HTTPS to --host that sends --host-header as SNI and verifies the certificate for that name."""

    def __init__(self, context):
        super().__init__(args.host, args.port, timeout=5, context=context)
        self.tls_context = context

    def connect(self):
        http.client.HTTPConnection.connect(self)
        self.sock = self.tls_context.wrap_socket(self.sock, server_hostname=args.host_header)


def connect():
    if args.tls_ca:
        return NamedTLSConnection(ssl.create_default_context(cafile=args.tls_ca))
    return http.client.HTTPConnection(args.host, args.port, timeout=5)


def send(connection, method="GET", path=None):
    """(status, body, connection, retried). A reused keep-alive connection that nginx closed before
    answering (it closes idle ones on reload) is retried once on a new connection, as HTTP clients do;
    ``retried`` says so, because a retry is a request that did not get through the first time."""
    retried = False
    for reused in (connection is not None, False):
        if connection is None:
            connection = connect()
        try:
            headers = {"Host": args.host_header}
            body = None
            if method == "POST":
                headers["Content-Type"] = "application/json"
                body = json.dumps({"body": "request loop"})
            connection.request(method, path or args.path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read(), connection, retried
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            connection = None
            if not reused:
                return None, f"{type(exc).__name__}: {exc}".encode(), None, retried
            retried = True
    return None, b"unreachable", None, retried


started = time.monotonic()
total = 0
failures = []
retried = 0
posts = 0
versions = []
connection = None
while (
    total < args.max_requests and time.monotonic() - started < args.max_seconds and not os.path.exists(args.stop_file)
):
    total += 1
    post = bool(args.post_path) and total % 2 == 0
    posts += post
    status, body, connection, was_retried = send(connection, "POST", args.post_path) if post else send(connection)
    retried += was_retried
    if status != (201 if post else 200):
        failures.append(f"{status} {body[:120]!r}")
        continue
    version = json.loads(body).get("version")
    if not versions or versions[-1] != version:
        versions.append(version)
    time.sleep(0.005)

summary = {
    "requests": total,
    "failed": len(failures),
    "failures": failures[:20],
    "retried": retried,
    "posts": posts,
    "versions": versions,
    "seconds": round(time.monotonic() - started, 1),
}
with open(args.out, "w") as out:
    json.dump(summary, out)
print(json.dumps(summary))
