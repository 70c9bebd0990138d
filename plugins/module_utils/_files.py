# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files that readers must never see half written (nginx's upstream files, state.json)."""

from __future__ import annotations

import os
import tempfile


def write_atomically(path, content, mode, prefix=".berth-"):
    """Replace ``path`` with ``content`` in one rename: a temporary file in the same directory first."""
    fd, temporary = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
