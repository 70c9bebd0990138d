"""A bounded request loop through the load balancer during a fleet deploy, run on the load balancer
against 127.0.0.1 only: at most --max-requests requests and --max-seconds seconds, or until --stop-file
appears. Each answer names the app host that served it (X-Berth-Host, set by that host's nginx) and the
release (the JSON body's version). Before every request the loop reads the load balancer's upstream
file, so it knows when each host was marked down (drained) and up again, and the titles of nginx's
processes, so it knows when the reload that applied the mark took effect: the file is renamed into place
before nginx -t and the reload, and until every worker from before the reload is gone or "shutting down"
(it then takes no new connection), an old worker may still send a request to the host. A drain's window
runs from that moment until the host is up again. Prints a JSON summary."""

import argparse
import http.client
import json
import os
import re
import time

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=80)
parser.add_argument("--path", default="/healthz")
parser.add_argument("--host-header", default="fleet.localhost")
parser.add_argument("--upstream-file", default="/etc/nginx/berth/upstreams/demo_fleet.conf")
parser.add_argument("--server", action="append", default=[], help="HOST=ADDRESS:PORT, as the upstream file names it")
parser.add_argument("--max-requests", type=int, default=60000)
parser.add_argument("--max-seconds", type=float, default=900)
parser.add_argument("--stop-file", default="/run/berth-fleet-loop.stop")
parser.add_argument("--nginx-pid-file", default="/run/nginx.pid")
args = parser.parse_args()
servers = dict(item.split("=", 1) for item in args.server)


def down_hosts():
    try:
        with open(args.upstream_file, encoding="utf-8") as handle:
            content = handle.read()
    except FileNotFoundError:
        return set()
    down = set(re.findall(r"server ([^ ;]+) [^;]*down;", content))
    return {host for host, address in servers.items() if address in down}


def accepting_workers():
    """The pids of the nginx workers that take new connections (a worker told to quit by a reload retitles
    itself "nginx: worker process is shutting down"). Every worker, old or new, is a child of the master,
    which a reload keeps: its children are read instead of every process's title, a few reads a request
    instead of one per process."""
    try:
        with open(args.nginx_pid_file, encoding="ascii") as handle:
            master = handle.read().strip()
        with open(f"/proc/{master}/task/{master}/children", encoding="ascii") as handle:
            children = handle.read().split()
    except OSError:
        return set()
    pids = set()
    for pid in children:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if handle.read().rstrip(b"\0 ") == b"nginx: worker process":
                    pids.add(pid)
        except OSError:
            continue
    return pids


def send(connection):
    """(status, headers, body, connection, retried): a reused keep-alive connection that nginx closed (it
    closes idle ones on reload) is retried once on a new connection, and counted as retried."""
    retried = False
    for reused in (connection is not None, False):
        if connection is None:
            connection = http.client.HTTPConnection("127.0.0.1", args.port, timeout=5)
        try:
            connection.request("GET", args.path, headers={"Host": args.host_header})
            response = connection.getresponse()
            return response.status, response.headers, response.read(), connection, retried
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            connection = None
            if not reused:
                return None, {}, f"{type(exc).__name__}: {exc}".encode(), None, retried
            retried = True
    return None, {}, b"unreachable", None, retried


started = time.monotonic()
total = 0
failures = []
retried = 0
answers = []  # (sent at, host, version)
# host -> [[down since, up again or None, reload in effect since or None, the workers before the reload]]
windows = {host: [] for host in servers}
connection = None
workers = accepting_workers()
while (
    total < args.max_requests and time.monotonic() - started < args.max_seconds and not os.path.exists(args.stop_file)
):
    now = time.time()
    down = down_hosts()
    # The workers as they were at the last request: the file was not marked then, so not reloaded either.
    workers_before, workers = workers, accepting_workers()
    for host in servers:
        open_window = windows[host] and windows[host][-1][1] is None
        if host in down and not open_window:
            windows[host].append([now, None, None, workers_before])
        elif host not in down and open_window:
            windows[host][-1][1] = now
        for window in windows[host]:
            if window[2] is None and window[1] is None and workers and not workers & window[3]:
                window[2] = now
    total += 1
    status, headers, body, connection, was_retried = send(connection)
    retried += was_retried
    if status != 200:
        failures.append(f"{status} {body[:120]!r}")
        continue
    answers.append((now, headers.get("X-Berth-Host"), json.loads(body).get("version")))
    time.sleep(0.005)
ended = time.time()

hosts = {}
for host, host_windows in windows.items():
    served = [(at, version) for at, who, version in answers if who == host]
    report = {"answers": len(served), "versions": [], "drains": []}
    for _at, version in served:
        if not report["versions"] or report["versions"][-1] != version:
            report["versions"].append(version)
    for since, until, effective, _workers in host_windows:
        until = until or ended
        # No window at all while the reload never took effect: answers_inside stays 0 and the test says so.
        inside = [(at, who) for at, who, _version in answers if effective is not None and effective <= at < until]
        before = [version for at, version in served if at < since]
        after = [version for at, version in served if at >= until]
        report["drains"].append(
            {
                "since": round(since, 2),
                "until": round(until, 2),
                "seconds": round(until - since, 2),
                "reload_seconds": None if effective is None else round(effective - since, 2),
                "answers_inside": len(inside),
                "answers_inside_by_this_host": len([1 for _at, who in inside if who == host]),
                "version_before": before[-1] if before else None,
                "version_after": after[0] if after else None,
                "ended": until != ended,
            }
        )
    hosts[host] = report

summary = {
    "requests": total,
    "failed": len(failures),
    "failures": failures[:20],
    "retried": retried,
    "unnamed_answers": len([1 for _at, who, _version in answers if who not in servers]),
    "hosts": hosts,
    "seconds": round(time.monotonic() - started, 1),
}
print(json.dumps(summary))
