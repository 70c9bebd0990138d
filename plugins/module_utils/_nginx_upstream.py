# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nginx upstream files and colour markers, as the nginx role and the rollout share them.

One file per upstream, ``<upstreams_dir>/<name>.conf``, that the nginx role's http context includes.
The nginx role writes it first as a placeholder, one ``upstream <name>`` block. The rollout then owns
it and writes one group per color beside that block, ``upstream <name>__blue`` and
``upstream <name>__green`` (each color's fixed 127.0.0.1 ports): a file changes only when a color's
ports change, and the rollout replaces it atomically, checks the whole configuration with
``nginx -t`` and reloads before any traffic can reach the changed group.

Which group serves is chosen per request by the site's server block (the nginx role's site
template) from the color markers beside the file, with no reload:

    set $berth_upstream_<name> <name>;
    if (-f <upstreams_dir>/<name>.blue) { set $berth_upstream_<name> <name>__blue; }
    if (-f <upstreams_dir>/<name>.green) { set $berth_upstream_<name> <name>__green; }
    ... proxy_pass http://$berth_upstream_<name>;

So green wins when both markers exist, and with no marker (before the first switch, or on a host
deployed before the markers existed) the ``<name>`` block serves as it always did. A switch writes the
new marker aside and renames it into place, then removes the other one: for nginx exactly one of
those two steps changes the answer, and each is atomic. The markers are the record on disk: nginx
reads them at every request, so the live color survives a restart and a reboot.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile

from ansible_collections.berth.stack.plugins.module_utils import _files as files
from ansible_collections.berth.stack.plugins.module_utils._release_state import COLORS

FILE_MODE = 0o644
# The site template tests the markers in the colors' order: when both exist, the later color wins.
MARKER_ORDER = COLORS


def group_name(name, color):
    """The upstream group of one color of upstream ``name``."""
    return f"{name}__{color}"


def marker_path(upstreams_dir, name, color):
    """The file whose existence sends upstream ``name`` to its ``color`` group."""
    return os.path.join(upstreams_dir, f"{name}.{color}")


def marker_content(name, color, app):
    return (
        f"# berth.stack.compose_rollout, app {app}: while this file exists nginx sends {name} to "
        f"{group_name(name, color)}\n"
    )


def selected_color(markers):
    """The color nginx selects given ``markers`` (color -> the marker's content, None when absent), or None."""
    present = [color for color in MARKER_ORDER if markers.get(color) is not None]
    return present[-1] if present else None


def upstream_path(upstreams_dir, name):
    return os.path.join(upstreams_dir, f"{name}.conf")


def render_upstream(name, ports, keepalive=16, comment=None, host="127.0.0.1"):
    """The file content for one upstream: a server line per port, keepalive to the backends."""
    lines = [f"# {comment}"] if comment else []
    lines.append(f"upstream {name} {{")
    # max_fails=0: the rollout's gates decide whether a backend is good, not nginx's passive checks,
    # so a burst of errors never takes the only server of an upstream out of rotation.
    lines += [f"    server {host}:{port} max_fails=0;" for port in ports]
    lines += [f"    keepalive {keepalive};", "}", ""]
    return "\n".join(lines)


def read_file(path):
    """The file's content, or None when it does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def upstream_ports(content):
    """The ports of the 127.0.0.1 servers an upstream block (or file) names (to tell which color it points at)."""
    return [int(port) for port in re.findall(r"^\s*server\s+127\.0\.0\.1:(\d+)\b", content or "", re.MULTILINE)]


def upstream_blocks(content):
    """name -> the text of each ``upstream <name> {...}`` block of a file, in order (comments left out)."""
    text = re.sub(r"#[^\n]*", "", content or "")
    return {name: f"upstream {name} {{{body}}}" for name, body in _blocks(text, "upstream", named=True)}


def render_upstream_file(blocks, comment):
    """An upstream file: a comment, then each block (as upstream_blocks() or render_upstream() give it)."""
    lines = [f"# {line}" for line in comment.splitlines()]
    return "\n".join(lines + [block.strip() + "\n" for block in blocks])


def dumped_upstreams(dump):
    """The names of the upstream groups an ``nginx -T`` dump defines."""
    return set(re.findall(r"^\s*upstream\s+([A-Za-z0-9_.-]+)\s*\{", dump or "", re.MULTILINE))


def dump_tests_marker(dump, path):
    """Whether an ``nginx -T`` dump tests for ``path`` (``if (-f <path>)``), i.e. whether the marker can
    change anything."""
    text = re.sub(r"#[^\n]*", "", dump or "")
    return re.search(r"\bif\s*\(\s*-f\s+" + re.escape(path) + r"\s*\)", text) is not None


def dumped_files(dump):
    """The files an ``nginx -T`` dump shows nginx reading (it heads each with ``# configuration file``)."""
    return set(re.findall(r"^# configuration file (.+):$", dump or "", re.MULTILINE))


def _blocks(text, keyword, named=False):
    """The ``<keyword> [name] {...}`` blocks of an nginx configuration text, nested blocks included, as
    (name, body) pairs; the name is None unless ``named``."""
    pattern = r"(?:^|[\s;{}])" + keyword + (r"\s+([A-Za-z0-9_.-]+)" if named else "") + r"\s*\{"
    blocks = []
    for match in re.finditer(pattern, text):
        depth, start = 1, match.end()
        for index in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[index], 0)
            if depth == 0:
                blocks.append((match.group(1) if named else None, text[start:index]))
                break
    return blocks


def site_certificate(dump, server_name):
    """The ``ssl_certificate`` of the server block in an ``nginx -T`` dump that listens with ssl and lists
    ``server_name``, as an absolute path (a relative one is nginx's: against its main file's directory);
    None when no such block exists."""
    files = re.findall(r"^# configuration file (.+):$", dump or "", re.MULTILINE)
    base = os.path.dirname(files[0]) if files else "/etc/nginx"
    text = re.sub(r"#[^\n]*", "", dump or "")
    for _name, body in _blocks(text, "server"):
        # The server's own directives: its location blocks are not searched.
        own = body
        while re.search(r"\{[^{}]*\}", own):
            own = re.sub(r"\{[^{}]*\}", "", own)
        names = re.findall(r"\bserver_name\s+([^;]+);", own)
        listens_tls = re.search(r"\blisten\s+[^;]*\bssl\b", own)
        certificate = re.search(r"\bssl_certificate\s+([^;\s]+)\s*;", own)
        if listens_tls and certificate and any(server_name in value.split() for value in names):
            return os.path.join(base, certificate.group(1).strip("'\""))
    return None


def write_atomically(path, content, mode=FILE_MODE):
    """Replace ``path`` with ``content`` in one rename, so nginx never reads half a file."""
    files.write_atomically(path, content, mode)


def restore(path, previous):
    """Put back what ``read_file()`` returned before a change (None: the file did not exist)."""
    if previous is None:
        if os.path.exists(path):
            os.unlink(path)
    else:
        write_atomically(path, previous)


def set_markers(changes):
    """Put markers in place, ``changes`` being path -> content (None: remove). Every new marker is written
    aside and synced first; then they are renamed into place, then the others removed, back to back, and
    the directories synced so that the switch survives a reboot."""
    prepared = []
    try:
        for path, content in changes.items():
            if content is not None:
                fd, temporary = tempfile.mkstemp(prefix=".berth-", suffix=".tmp", dir=os.path.dirname(path))
                prepared.append((temporary, path))
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(content)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.chmod(temporary, FILE_MODE)
        for temporary, path in prepared:
            os.replace(temporary, path)
        for path, content in changes.items():
            if content is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
    finally:
        for temporary, _path in prepared:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
    for directory in {os.path.dirname(path) for path in changes}:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# A load balancer's upstream (berth.stack.lb_upstream): the app hosts' front doors, not colors.
BALANCE_METHODS = ("least_conn", "round_robin", "ip_hash", "random")
_ADDRESS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:_-]*$")
_DURATION = re.compile(r"^[0-9]+(ms|s|m|h)?$")


def server_key(server):
    """``address:port`` of a load balancer's server (the name ``down`` and the results use)."""
    return f"{server['address']}:{server['port']}"


def balanced_upstream_errors(params):
    """Every problem of a load balancer upstream's parameters, as ``option=value: why``."""
    errors = []
    if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", params["name"] or ""):
        errors.append(f"name={params['name']!r}: letters, digits, _ . - only (an nginx upstream name and a file name)")
    if not params["servers"]:
        errors.append("servers=[]: an upstream needs at least one server")
    keys = [server_key(server) for server in params["servers"]]
    for server in params["servers"]:
        if not _ADDRESS.match(str(server["address"])):
            errors.append(f"servers.address={server['address']!r}: a host name or an IP address, nothing else")
        if not 0 < server["port"] < 65536:
            errors.append(f"servers.port={server['port']!r}: must be 1-65535")
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        errors.append(f"servers: {', '.join(duplicates)} listed more than once")
    unknown = sorted(set(params["down"]) - set(keys))
    if unknown:
        errors.append(f"down={unknown!r}: not among the servers ({', '.join(keys)})")
    if keys and not set(keys) - set(params["down"]):
        errors.append(f"down={sorted(params['down'])!r}: every server would be down, nothing would serve")
    if params["max_fails"] < 0:
        errors.append(f"max_fails={params['max_fails']}: must be at least 0 (0 turns the passive checks off)")
    if not _DURATION.match(str(params["fail_timeout"])):
        errors.append(f"fail_timeout={params['fail_timeout']!r}: an nginx time such as 10s or 500ms")
    if params["keepalive"] < 0:
        errors.append(f"keepalive={params['keepalive']}: must be at least 0 (0 leaves it off)")
    if params["drain_timeout"] < 0:
        errors.append(f"drain_timeout={params['drain_timeout']}: must be at least 0")
    if params["reload_timeout"] <= 0:
        errors.append(f"reload_timeout={params['reload_timeout']}: must be above 0")
    return errors


def render_balanced_upstream(params, comment):
    """The upstream file of a load balancer: one ``server`` line per front door, ``down`` for the drained
    ones (nginx keeps their place, so ``least_conn`` and ``ip_hash`` keep their state for the others)."""
    lines = [f"# {line}" for line in comment.splitlines()]
    lines.append(f"upstream {params['name']} {{")
    if params["balance"] != "round_robin":
        lines.append(f"    {params['balance']};")
    for server in params["servers"]:
        options = [f"max_fails={params['max_fails']}", f"fail_timeout={params['fail_timeout']}"]
        if server_key(server) in params["down"]:
            options.append("down")
        lines.append(f"    server {server_key(server)} {' '.join(options)};")
    if params["keepalive"]:
        lines.append(f"    keepalive {params['keepalive']};")
    lines += ["}", ""]
    return "\n".join(lines)


def down_servers(content):
    """The ``address:port`` of every server an upstream file marks ``down``."""
    return sorted(re.findall(r"^\s*server\s+(\S+)\s[^;\n]*\bdown\b[^;\n]*;", content or "", re.MULTILINE))


WORKER_TITLE = "nginx: worker process"


def nginx_workers(master_pid, proc="/proc"):
    """{pid: title} of the worker processes of the nginx master ``master_pid``, read from ``proc``. A worker
    that a reload told to quit is titled ``nginx: worker process is shutting down``; it no longer accepts
    connections but finishes the ones it has."""
    workers = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "stat"), encoding="utf-8", errors="replace") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            if parent != master_pid:
                continue
            with open(os.path.join(proc, entry, "cmdline"), "rb") as handle:
                title = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            continue  # the process exited while it was read
        if title.startswith(WORKER_TITLE):
            workers[int(entry)] = title
    return workers


def reload_applied(before, now):
    """Whether a reload has taken effect: a worker started after it runs, and none of the workers ``before``
    it (pids) still accepts connections (each has exited or is shutting down). ``now``: nginx_workers()."""
    started = [pid for pid in now if pid not in before]
    accepting_old = [pid for pid in before if now.get(pid) == WORKER_TITLE]
    return bool(started) and not accepting_old
