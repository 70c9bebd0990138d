"""The whole path through ansible-playbook: action plugin (controller analysis) + module, against a real cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from safe_migration_harness import COLLECTIONS, PASSWORD, REPO, postgres_bin

PLAYBOOK = """\
- name: Migrate the test database
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Apply migrations
      berth.stack.safe_migration:
        directory: {directory}
        host: 127.0.0.1
        port: {port}
        database: {database}
        user: postgres
        password: "{{{{ db_password }}}}"
        backup_dir: {backups}
"""


def ansible_playbook(playbook, *extra) -> tuple[int, dict]:
    environment = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "PATH": f"{postgres_bin()}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
    }
    completed = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            "-e",
            f"db_password={PASSWORD}",
            str(playbook),
            *extra,
        ],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO,
        timeout=120,
        check=False,  # failing runs are asserted on by the tests
    )
    try:
        report = json.loads(completed.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON from ansible-playbook: {completed.stdout}\n{completed.stderr}") from None
    return completed.returncode, report["plays"][0]["tasks"][0]["hosts"]["localhost"]


def test_action_plugin_and_module_through_ansible_playbook(database, tmp_path):
    migrations = tmp_path / "playbook" / "migrations"
    migrations.mkdir(parents=True)
    (migrations / "V1__accounts.sql").write_text("CREATE TABLE accounts (id bigint PRIMARY KEY, email text);\n")
    (migrations / "V2__index.sql").write_text(
        "-- berth:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_email ON accounts (email);\n"
    )
    backups = tmp_path / "backups"
    playbook = tmp_path / "playbook" / "migrate.yml"
    # A relative directory is found next to the playbook, as a `files` lookup would.
    playbook.write_text(
        PLAYBOOK.format(directory="migrations", port=database.cluster.port, database=database.name, backups=backups)
    )

    rc, planned = ansible_playbook(playbook, "--check")
    assert rc == 0, planned
    assert planned["changed"] is True
    assert [item["file"] for item in planned["pending"]] == ["V1__accounts.sql", "V2__index.sql"]
    assert database.history() == []

    rc, applied = ansible_playbook(playbook)
    assert rc == 0, applied.get("msg")
    assert applied["changed"] is True
    assert [row[0] for row in database.history()] == ["1", "2"]
    assert os.path.exists(applied["backup"]["path"])
    assert PASSWORD not in json.dumps(applied)

    rc, again = ansible_playbook(playbook)
    assert rc == 0
    assert again["changed"] is False


def test_a_missing_directory_fails_on_the_controller(database, tmp_path):
    playbook = tmp_path / "migrate.yml"
    playbook.write_text(
        PLAYBOOK.format(
            directory="no-such-dir", port=database.cluster.port, database=database.name, backups=tmp_path / "b"
        )
    )

    rc, result = ansible_playbook(playbook)

    assert rc != 0
    assert "directory: no-such-dir was not found on the controller" in result["msg"]
