"""The test hosts' bytecode cache for zip imports (tests/images/systemd/berth_zipimport_cache.py).

Each case runs a fresh interpreter, as each Ansible task does, with the hook loaded and its cache in
a temporary directory, and imports a module from a zip file, as an AnsiballZ payload is imported.
"""

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
HOOK_DIR = REPO / "tests" / "images" / "systemd"

# Loads the hook with its cache in argv[1] and, with argv[3] == "no-compile", forbids compiling, so
# that only a cached code object can satisfy the import. Prints the value and the function's file.
RUN = """
import sys
sys.path.insert(0, {hook_dir!r})
import berth_zipimport_cache as hook
hook.CACHE = sys.argv[1]
if sys.argv[3] == "no-compile":
    def refuse(pathname, source):
        raise AssertionError("compiled " + pathname)
    hook._COMPILE = refuse
sys.path.insert(0, sys.argv[2])
import berthprobe
print(berthprobe.value(), berthprobe.value.__code__.co_filename)
"""


def payload(directory: Path, value: str) -> Path:
    directory.mkdir()
    archive = directory / "payload.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("berthprobe.py", f"def value():\n    return {value!r}\n")
    return archive


def run(cache: Path, archive: Path, mode: str = "compile") -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", RUN.format(hook_dir=str(HOOK_DIR)), str(cache), str(archive), mode],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_a_source_is_compiled_once_and_its_code_names_the_importing_path(tmp_path):
    cache = tmp_path / "cache"
    first = payload(tmp_path / "first", "one")
    assert run(cache, first) == ["one", f"{first}/berthprobe.py"]
    assert len(list(cache.iterdir())) == 1

    # Another payload with the same source, at another path: served from the cache without compiling,
    # and its code names the new path.
    second = payload(tmp_path / "second", "one")
    assert run(cache, second, "no-compile") == ["one", f"{second}/berthprobe.py"]
    assert len(list(cache.iterdir())) == 1


def test_a_changed_source_is_compiled_again(tmp_path):
    cache = tmp_path / "cache"
    run(cache, payload(tmp_path / "first", "one"))
    changed = payload(tmp_path / "changed", "two")
    assert run(cache, changed) == ["two", f"{changed}/berthprobe.py"]
    assert len(list(cache.iterdir())) == 2


def test_an_unwritable_cache_only_means_compiling(tmp_path):
    blocked = tmp_path / "file-not-directory"
    blocked.write_text("")
    archive = payload(tmp_path / "first", "one")
    assert run(blocked / "cache", archive) == ["one", f"{archive}/berthprobe.py"]
