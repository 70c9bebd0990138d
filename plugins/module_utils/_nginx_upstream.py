# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nginx upstream files as the nginx role and the rollout share them.

One file per upstream, ``<upstreams_dir>/<name>.conf``, holding exactly one ``upstream`` block
that the nginx role's http context includes. The rollout replaces a file atomically (a temporary
file in the same directory, then rename), checks the whole configuration with ``nginx -t``, and
restores the previous contents when the check fails.
"""

from __future__ import annotations

import os
import re

from ansible_collections.berth.stack.plugins.module_utils import _files as files

FILE_MODE = 0o644


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
    """The ports of the 127.0.0.1 servers an upstream file names (to tell which color it points at)."""
    return [int(port) for port in re.findall(r"^\s*server\s+127\.0\.0\.1:(\d+)\b", content or "", re.MULTILINE)]


def dumped_files(dump):
    """The files an ``nginx -T`` dump shows nginx reading (it heads each with ``# configuration file``)."""
    return set(re.findall(r"^# configuration file (.+):$", dump or "", re.MULTILINE))


def _blocks(text, keyword):
    """The bodies of the ``<keyword> {...}`` blocks of an nginx configuration text, nested blocks included."""
    bodies = []
    for match in re.finditer(r"(?:^|[\s;{}])" + keyword + r"\s*\{", text):
        depth, start = 1, match.end()
        for index in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[index], 0)
            if depth == 0:
                bodies.append(text[start:index])
                break
    return bodies


def site_certificate(dump, server_name):
    """The ``ssl_certificate`` of the server block in an ``nginx -T`` dump that listens with ssl and lists
    ``server_name``, as an absolute path (a relative one is nginx's: against its main file's directory);
    None when no such block exists."""
    files = re.findall(r"^# configuration file (.+):$", dump or "", re.MULTILINE)
    base = os.path.dirname(files[0]) if files else "/etc/nginx"
    text = re.sub(r"#[^\n]*", "", dump or "")
    for body in _blocks(text, "server"):
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
