"""Test hosts, and the project virtualenv (prepare.py's zipimport-cache step): keep the bytecode of
modules imported from zip files (Ansible's AnsiballZ payloads).

zipimport compiles every .py file it imports, every time, and writes no bytecode: each Ansible module
task on a test host compiled ansible.module_utils again, about a third of the task's CPU on the host.
This keeps each compiled module under a hash of its source, the interpreter's magic number and the
optimization level, so a source is compiled once per host. The cached code gets the importing path
as its file name, as a fresh compile would. What the modules do does not change, only how often
Python compiles them. Loaded by berth-zipimport-cache.pth at interpreter start-up; its imports wait
until the first compile, so a Python program that imports nothing from a zip pays nothing for it.
"""

import zipimport

CACHE = "/var/cache/berth-zipimport"
_COMPILE = zipimport._compile_source
_CODE = type(_COMPILE.__code__)


def _with_filename(code, filename):
    consts = tuple(_with_filename(const, filename) if isinstance(const, _CODE) else const for const in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def _compile_source(pathname, source):
    import hashlib
    import importlib.util
    import marshal
    import os
    import sys
    import tempfile

    key = hashlib.sha256(importlib.util.MAGIC_NUMBER + bytes([sys.flags.optimize]) + source).hexdigest()
    path = os.path.join(CACHE, key)
    try:
        with open(path, "rb") as cached:
            # Only root writes here (the directory is 0700), and only code this function compiled.
            code = marshal.loads(cached.read())  # noqa: S302
        if isinstance(code, _CODE):
            return _with_filename(code, pathname)
    except (OSError, ValueError, EOFError, TypeError):
        pass
    code = _COMPILE(pathname, source)
    try:
        os.makedirs(CACHE, mode=0o700, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=CACHE, delete=False) as new:
            new.write(marshal.dumps(code))
        os.replace(new.name, path)
    except OSError:
        pass
    return code


zipimport._compile_source = _compile_source
