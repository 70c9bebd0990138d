"""Make the checkout importable as ``ansible_collections.berth.stack`` for module and plugin tests.

`make venv` (tests/harness/prepare.py --only link) links the checkout under .ansible/collections,
the same path ansible.cfg gives Ansible, so tests import the code exactly as Ansible runs it.
"""

import sys
from pathlib import Path

COLLECTIONS = Path(__file__).resolve().parents[2] / ".ansible" / "collections"

if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))
