"""Test-harness callback: the ansible-playbook runs of one `make test` share their module payloads.

ansible-core builds each module's AnsiballZ payload (the module and the module_utils it imports, found
by parsing their sources) once per ansible-playbook process, in a cache under that process's own local
temporary directory, and throws it away at the end. The suite starts a few hundred ansible-playbook
processes, and building payloads was about a sixth of their CPU (measured on compose_app's idempotence
run). When BERTH_ANSIBALLZ_CACHE names a directory, this callback points the run's payload cache there
before any task runs, so that each module is built once per `make test`. ansible-core's own lock and
atomic rename keep concurrent runs apart, as they do for one run's forked workers.

tests/harness/lanes.py sets the variable to a directory it creates for one `make test` and removes at
the end; nothing changes the collection's sources while it runs. Without the variable, or if a later
ansible-core keeps its cache elsewhere, runs build their payloads as before. It is loaded through
ANSIBLE_CALLBACK_PLUGINS, needs no enabling, and prints nothing.
"""

from __future__ import annotations

import os

from ansible import constants as C
from ansible.plugins.callback import CallbackBase

# Where ansible-core 2.19 keeps a run's payload cache: ansible/executor/module_common.py.
PAYLOAD_CACHE = "ansiballz_cache"


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "berth_shared_payloads"
    CALLBACK_NEEDS_ENABLED = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        shared = os.environ.get("BERTH_ANSIBALLZ_CACHE", "")
        if not shared:
            return
        os.makedirs(shared, mode=0o700, exist_ok=True)
        link = os.path.join(C.DEFAULT_LOCAL_TMP, PAYLOAD_CACHE)
        if not os.path.lexists(link):
            os.symlink(shared, link)
