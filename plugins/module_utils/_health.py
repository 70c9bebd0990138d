# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""HTTP health probes for rollout gates: status code, a JMESPath assertion on the JSON body, and
"N consecutive successes within a deadline".

Only the standard library and (for body assertions) jmespath, which Debian ships as
python3-jmespath. Plain functions: ``probe()`` makes one request, ``probe_until()`` repeats it.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
import traceback
import urllib.parse

JMESPATH_IMPORT_ERROR = None
try:
    import jmespath

    HAS_JMESPATH = True
except ImportError:
    JMESPATH_IMPORT_ERROR = traceback.format_exc()
    HAS_JMESPATH = False

BODY_EXCERPT = 300


def compile_expression(expression):
    """A compiled JMESPath expression, or ValueError naming the expression and the parse error."""
    try:
        return jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as exc:
        raise ValueError(f"invalid JMESPath expression {expression!r}: {exc}") from exc


class _NamedTLSConnection(http.client.HTTPSConnection):
    """HTTPS to an address (127.0.0.1) that sends ``server_name`` as SNI and verifies the certificate for it."""

    def __init__(self, host, port, server_name, context, timeout):
        super().__init__(host, port, timeout=timeout, context=context)
        self.server_name = server_name
        self.tls_context = context

    def connect(self):
        http.client.HTTPConnection.connect(self)
        self.sock = self.tls_context.wrap_socket(self.sock, server_hostname=self.server_name)


def tls_context(ca_file=None):
    """Verification against ``ca_file`` (any certificate in it is trusted as an anchor, so a site's own
    certificate is enough, self-signed or not), or the system's CAs without one."""
    context = ssl.create_default_context(cafile=ca_file or None)
    if ca_file:
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    # Python 3.13 adds X.509 strict checks to the default context; nginx's own certificates (a
    # self-signed one without key usage, say) are the ones to verify, not to audit.
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return context


def _connection(url, timeout, tls):
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        tls = tls or {}
        server_name = tls.get("server_name") or parts.hostname
        context = tls_context(tls.get("ca_file"))
        connection = _NamedTLSConnection(parts.hostname, parts.port or 443, server_name, context, timeout)
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    target = parts.path or "/"
    return connection, target + (f"?{parts.query}" if parts.query else "")


def probe(url, method="GET", status=200, expression=None, headers=None, timeout=5.0, tls=None):
    """One request. Returns a dict: ok, url, status, body (an excerpt), reason (why it failed).

    Redirects are answers to judge, not to follow: a health path that redirects is a failure. An https
    ``url`` sends ``tls["server_name"]`` as SNI and verifies the certificate for that name against
    ``tls["ca_file"]`` (the system CAs without one)."""
    # Callers build http(s) URLs only: 127.0.0.1 ports or the validated nginx_url.
    result = {"ok": False, "url": url, "status": None, "body": None, "reason": None}
    connection, target = _connection(url, timeout, tls)
    try:
        connection.request(method, target, headers=dict(headers or {}))
        response = connection.getresponse()
        code, raw = response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        result["reason"] = f"request failed: {exc or type(exc).__name__}"
        return result
    finally:
        connection.close()
    text = raw.decode("utf-8", errors="replace")
    result.update(status=code, body=text[:BODY_EXCERPT])
    if code != status:
        result["reason"] = f"status {code}, expected {status}"
        return result
    if expression is not None:
        try:
            document = json.loads(text)
        except ValueError:
            result["reason"] = "body is not JSON, so the expression cannot be checked"
            return result
        compiled = expression if hasattr(expression, "search") else compile_expression(expression)
        value = compiled.search(document)
        if not value:
            result["reason"] = f"expression {compiled.expression!r} is {json.dumps(value)} on the body"
            return result
    result["ok"] = True
    return result


def probe_until(
    check,
    successes=3,
    interval=1.0,
    timeout=60.0,
    clock=time.monotonic,
    sleep=time.sleep,
    failures=None,
    abort=None,
    count_failures_from=None,
):
    """Call ``check()`` (returning a probe() dict) until it succeeds ``successes`` times in a row.

    A failure resets the count. Gives up when the next attempt would start after ``timeout``
    seconds, after ``failures`` failures in a row (None: only at the timeout; failures before the
    clock reads ``count_failures_from``, a boot grace, do not count), or as soon as ``abort()``
    returns a reason (a container that exited: no answer will ever come), which then joins the last
    result's reason. Returns (passed, attempts, last_result).
    """
    deadline = clock() + timeout
    streak = failed = attempts = 0
    last = None
    while True:
        last = check()
        attempts += 1
        streak = streak + 1 if last["ok"] else 0
        counted = count_failures_from is None or clock() >= count_failures_from
        failed = 0 if last["ok"] else failed + counted
        if streak >= successes:
            return True, attempts, last
        if failures is not None and failed >= failures:
            return False, attempts, {**last, "reason": f"{last.get('reason')} ({failed} failures in a row)"}
        reason = abort() if abort is not None and not last["ok"] else None
        if reason:
            return False, attempts, {**last, "reason": f"{last.get('reason')}; {reason}"}
        if clock() + interval > deadline:
            return False, attempts, last
        sleep(interval)
