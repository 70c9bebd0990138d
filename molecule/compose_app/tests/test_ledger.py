"""The second app, ledger, after side_effect: its schema came from the app's own migration tool
(safe_migration's command mode), its history keeps 2 releases, pruning removed the directories of
r1 to r3 and the images only r2 and r3 used (r1's image, still used by another container, stays), and
r6 came from the registry on the test host (compose_app_image_policy=pull)."""

import json

import pytest

testinfra_hosts = ["ansible://compose_app-debian13"]


def psql(host, sql):
    return host.check_output("docker exec ledger-data-db-1 psql -U ledger -d ledger -qtAc %s", sql)


def test_the_apps_own_tool_applied_every_migration(host):
    assert psql(host, "SELECT version FROM demo_schema_migrations ORDER BY 1").split() == ["V0001", "V0002", "V0003"]
    columns = psql(host, "SELECT column_name FROM information_schema.columns WHERE table_name = 'jobs'").split()
    assert "note" in columns


def test_no_sql_directory_history_was_written(host):
    assert psql(host, "SELECT to_regclass('berth_schema_history') IS NULL") == "t"


def test_every_pending_migration_was_backed_up_first(host):
    # r1 (empty database), r2 (V0003) and the failing r5 (its check said pending): three dumps, 0600.
    dumps = host.check_output("ls /srv/berth/ledger/backups").split()
    assert len(dumps) == 3
    for name in dumps:
        dump = host.file(f"/srv/berth/ledger/backups/{name}")
        assert dump.mode == 0o600
        assert dump.size > 0


def test_the_worker_of_r6_consumes_the_queue(host):
    psql(host, "INSERT INTO jobs (payload, note) VALUES ('ledger verify', 'uses V0003')")
    for _attempt in range(30):
        status = psql(host, "SELECT status FROM jobs WHERE payload = 'ledger verify'")
        if status == "done":
            break
        host.run("sleep 0.5")
    assert status == "done"


def test_history_keeps_two_releases_and_the_failed_r5_never_became_active(host):
    state = json.loads(host.file("/srv/berth/ledger/state.json").content_string)
    assert state["active"]["release"] == "r6"
    assert [item["release"] for item in state["releases"]] == ["r6", "r4"]
    worker = state["releases"][0]["images"]["worker"]
    assert worker["image"] == "127.0.0.1:5000/berth/ledger-worker:r6"
    # Pulled from a registry, so the release records the digest the tag resolved to.
    assert any(digest.startswith("127.0.0.1:5000/berth/ledger-worker@sha256:") for digest in worker["repo_digests"])


@pytest.mark.parametrize(("release", "kept"), [("r1", False), ("r2", False), ("r3", False), ("r4", True), ("r6", True)])
def test_pruned_release_directories_are_removed(host, release, kept):
    assert host.file(f"/srv/berth/ledger/releases/{release}").exists is kept


@pytest.mark.parametrize(
    ("image", "kept"),
    [
        ("berth/ledger-worker:r2", False),
        ("berth/ledger-worker:r3", False),
        ("berth/ledger-worker:r4", True),
        # r1's image outlived r1's pruning: ledger-r1-user still uses it.
        ("berth/ledger-worker:r1", True),
        ("127.0.0.1:5000/berth/ledger-worker:r6", True),
    ],
)
def test_images_only_pruned_releases_used_are_removed(host, image, kept):
    assert (host.run("docker image inspect %s", image).rc == 0) is kept
