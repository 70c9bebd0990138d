# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""HTTP health probes for rollout gates: status code, a JMESPath assertion on the JSON body, and
"N consecutive successes within a deadline".

Only the standard library and (for body assertions) jmespath, which Debian ships as
python3-jmespath. Plain functions: ``probe()`` makes one request, ``probe_until()`` repeats it.
"""

from __future__ import annotations

import json
import time
import traceback
import urllib.error
import urllib.request

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


def _no_redirect_opener():
    """Redirects are answers to judge, not to follow: a health path that redirects is a failure."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            return None

    return urllib.request.build_opener(NoRedirect)


def probe(url, method="GET", status=200, expression=None, headers=None, timeout=5.0):
    """One request. Returns a dict: ok, url, status, body (an excerpt), reason (why it failed)."""
    # Callers build http(s) URLs only: 127.0.0.1 ports or the validated nginx_url.
    request = urllib.request.Request(url, method=method, headers=dict(headers or {}))  # noqa: S310
    result = {"ok": False, "url": url, "status": None, "body": None, "reason": None}
    try:
        with _no_redirect_opener().open(request, timeout=timeout) as response:
            code, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        code, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        result["reason"] = f"request failed: {getattr(exc, 'reason', exc)}"
        return result
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
