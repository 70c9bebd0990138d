# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SQL files read out of a container image without running it, for Mode 2 of safe_migration.

``docker create`` makes a container that never starts; ``docker cp CONTAINER:DIR -`` streams the
directory as a tar archive; the container is removed again. Only the directory above the first
wildcard of each pattern is copied, so a pattern under /app/migrations does not read the whole image.
``run`` is injected (argv -> CompletedProcess with bytes) so tests can drive it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import posixpath
import subprocess
import tarfile
import uuid

WILDCARDS = set("*?[")


class ImageError(Exception):
    """A docker command failed; the message names the image and docker's own words."""


def default_run(argv: list) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, check=False, timeout=300)


def pattern_errors(option: str, patterns: list) -> list:
    return [
        f"{option}: {pattern!r} must be an absolute path inside the image, such as /app/migrations/*/migration.sql"
        for pattern in patterns
        if not pattern.startswith("/")
    ]


def static_prefix(pattern: str) -> str:
    """The directory above the first segment with a wildcard: /app/migrations/*/x.sql -> /app/migrations."""
    parts = pattern.split("/")
    for index, part in enumerate(parts):
        if WILDCARDS & set(part):
            return "/".join(parts[:index]) or "/"
    return posixpath.dirname(pattern) or "/"


def matches(path: str, pattern: str) -> bool:
    """Segment-wise glob: * and ? stay inside one directory level, ** spans any number of them."""

    def match(names, globs):
        if not globs:
            return not names
        if globs[0] == "**":
            return any(match(names[index:], globs[1:]) for index in range(len(names) + 1))
        return bool(names) and fnmatch.fnmatchcase(names[0], globs[0]) and match(names[1:], globs[1:])

    return match(path.strip("/").split("/"), pattern.strip("/").split("/"))


def _docker(run, argv: list, image: str, what: str) -> bytes:
    completed = run(argv)
    if completed.returncode != 0:
        stderr = completed.stderr.decode(errors="replace").strip() if completed.stderr else ""
        raise ImageError(
            f"{what} of image {image} failed: {' '.join(argv[:3])} exited {completed.returncode}: {stderr}"
        )
    return completed.stdout


def image_sql_files(docker: str, image: str, patterns: list, run=default_run) -> dict:
    """{path in the image: text} of the regular files matching any pattern."""
    container = f"berth-sql-read-{uuid.uuid4().hex[:12]}"
    # The entrypoint is never run: the container is only created so that docker cp can read it.
    _docker(
        run, [docker, "create", "--name", container, "--entrypoint", "/berth-never-runs", image], image, "docker create"
    )
    files = {}
    try:
        for prefix in dict.fromkeys(static_prefix(pattern) for pattern in patterns):
            completed = run([docker, "cp", f"{container}:{prefix}", "-"])
            if completed.returncode != 0:
                stderr = completed.stderr.decode(errors="replace") if completed.stderr else ""
                if "Could not find the file" in stderr or "No such container:path" in stderr:
                    continue  # this image has no such directory: no files from it
                raise ImageError(f"docker cp {prefix} out of image {image} failed: {stderr.strip()}")
            base = posixpath.dirname(prefix.rstrip("/")) if prefix != "/" else ""
            with tarfile.open(fileobj=io.BytesIO(completed.stdout), mode="r:") as archive:
                for member in archive:
                    path = posixpath.normpath(posixpath.join("/", base, member.name))
                    if member.isfile() and any(matches(path, pattern) for pattern in patterns):
                        content = archive.extractfile(member).read()
                        try:
                            files[path] = content.decode("utf-8")
                        except UnicodeDecodeError as error:
                            raise ImageError(f"{path} in image {image} is not UTF-8 ({error.reason})") from error
    finally:
        run([docker, "rm", "--force", container])
    return files


def new_sql_files(docker: str, image: str, previous_image: str | None, patterns: list, run=default_run) -> list:
    """[{source, text}] of the SQL files the image carries that previous_image did not (or had with
    other content), in path order: what the app's tool is about to apply. A pattern that matches no file
    in the image is refused: the files it was meant to name would reach the tool unreviewed."""
    current = image_sql_files(docker, image, patterns, run)
    for pattern in patterns:
        if not any(matches(path, pattern) for path in current):
            raise ImageError(
                f"{pattern!r} matches no file in image {image}, so the SQL the tool applies would go unreviewed; "
                "name where the image keeps its migration files"
            )
    previous = image_sql_files(docker, previous_image, patterns, run) if previous_image else {}

    def digest(text):
        return hashlib.sha256(text.encode()).hexdigest()

    return [
        {"source": path, "text": text}
        for path, text in sorted(current.items())
        if path not in previous or digest(previous[path]) != digest(text)
    ]
