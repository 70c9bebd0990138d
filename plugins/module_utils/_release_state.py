# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An app's state.json: which color serves, and the releases deployed, newest first.

    {"app": "demo",
     "active": {"color": "green", "release": "r2", "since": "2025-01-01T10:00:00Z"},
     "releases": [{"release": "r2", "color": "green", "release_dir": "...",
                   "deployed_at": "...", "images": {"backend": {"image": ..., "image_id": ...}}}, ...]}

Plain functions over plain dicts; ``save_state()`` writes atomically.
"""

from __future__ import annotations

import json
import os

from ansible_collections.berth.stack.plugins.module_utils import _files as files

COLORS = ("blue", "green")
STATE_MODE = 0o644
# Beside state.json: the digest of the inputs of the last deploy that ended with its release serving.
FINGERPRINT_FILE = "fingerprint.json"


def empty_state(app):
    return {"app": app, "active": None, "releases": []}


def load_state(path, app):
    """The state in ``path``; an empty state when the file does not exist; ValueError when unreadable."""
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
    except FileNotFoundError:
        return empty_state(app)
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); fix or remove it") from exc
    if not isinstance(state, dict) or state.get("app") != app:
        raise ValueError(f"{path} does not hold the state of app {app!r}")
    state.setdefault("active", None)
    state.setdefault("releases", [])
    return state


def save_state(path, state):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    files.write_atomically(path, json.dumps(state, indent=2, sort_keys=True) + "\n", STATE_MODE, prefix=".state-")


def fingerprint_path(state_path):
    return os.path.join(os.path.dirname(state_path), FINGERPRINT_FILE)


def load_fingerprint(state_path):
    """``{"release": ..., "fingerprint": ...}`` of the last complete deploy; {} when there is none or unreadable."""
    try:
        with open(fingerprint_path(state_path), encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def save_fingerprint(state_path, release, fingerprint):
    record = {"release": release, "fingerprint": fingerprint}
    if load_fingerprint(state_path) != record:
        files.write_atomically(
            fingerprint_path(state_path), json.dumps(record, sort_keys=True) + "\n", STATE_MODE, prefix=".fingerprint-"
        )


def other_color(color):
    return COLORS[1] if color == COLORS[0] else COLORS[0]


def active_color(state):
    return (state.get("active") or {}).get("color")


def active_release(state):
    return (state.get("active") or {}).get("release")


def next_color(live):
    """The idle color a new release starts in: the one not serving (blue on a first deploy, ``live`` None)."""
    return other_color(live) if live else COLORS[0]


def record_release(state, release, color, release_dir, images, now, keep, release_sha256=None):
    """Make ``release`` active on ``color`` and put it first in the history, keeping ``keep`` entries.

    A release deployed again (a rollback) moves to the front instead of appearing twice.
    ``release_sha256`` covers the release's compose file and the env and secret files it reads, so the same
    release id with a changed configuration or secret is rolled out again.
    Returns the history entries dropped beyond ``keep``.
    """
    entry = {
        "release": release,
        "color": color,
        "release_dir": release_dir,
        "release_sha256": release_sha256,
        "deployed_at": now,
        "images": images,
    }
    history = [item for item in state["releases"] if item.get("release") != release]
    history.insert(0, entry)
    state["active"] = {"color": color, "release": release, "since": now}
    state["releases"] = history[:keep]
    return history[keep:]


def find_release(state, release):
    for item in state["releases"]:
        if item.get("release") == release:
            return item
    return None
