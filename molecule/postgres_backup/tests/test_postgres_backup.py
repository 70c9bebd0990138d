"""What postgres_backup left on the hosts after side_effect.yml, read from the hosts themselves."""

import json
import os
import time

import pytest
import testinfra

testinfra_hosts = ["ansible://postgres_backup-debian13"]

BACKUPS = "/var/backups/berth/postgres"
SCRIPT = "/usr/local/libexec/berth/berth-pg-backup"
METRICS = "/var/lib/prometheus/node-exporter"
REMOTE = "/home/backup-target/backups"
PSQL = "docker exec shop-data-db-1 psql -X -At -U shop"
ROW_7 = "'SELECT count(*) FROM notes WHERE id = 7'"
HOOK_LOG = "/var/tmp/berth-pg-backup-failures.log"  # noqa: S108 - a path on the test host, set in molecule.yml
HOOK_REQUESTS = "/var/tmp/berth-pg-backup-hook-requests.jsonl"  # noqa: S108 - as HOOK_LOG
SECRETS = ["s3cret-shop-pw", "s3cret-managed-pw", "PRIVATE KEY", "AGE-SECRET-KEY"]
# gfs job, faked clock 2026-03-15 12:00 UTC, keep_last 2, daily 3, weekly 2, monthly 2, over
# stand-ins at 01:00 every day since 1 January and at 06:00 on 15 March: the two newest, the newest
# of 15, 14 and 13 March, of the ISO weeks starting 9 and 2 March, and of March and February.
GFS_EXPECTED = [
    "gfs-20260228T010000Z.dump",
    "gfs-20260308T010000Z.dump",
    "gfs-20260313T010000Z.dump",
    "gfs-20260314T010000Z.dump",
    "gfs-20260315T060000Z.dump",
    "gfs-20260315T120000Z.dump",
]


def sftp_host():
    return testinfra.get_host("ansible://postgres_backup-sftp", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])


def metrics(host, job):
    values = {}
    for line in host.file(f"{METRICS}/berth_pg_backup_{job}.prom").content_string.splitlines():
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name.split("{")[0].removeprefix("berth_pg_backup_")] = float(value)
    return values


def listing(host, job):
    return [json.loads(line) for line in host.check_output(f"{SCRIPT} list {job}").splitlines()]


@pytest.mark.parametrize("job", ["shop", "gfs", "managed", "full"])
def test_each_job_has_an_enabled_persistent_timer(host, job):
    timer = host.service(f"berth-pg-backup@{job}.timer")
    assert timer.is_enabled and timer.is_running
    shown = host.check_output(
        f"systemctl show berth-pg-backup@{job}.timer -p Persistent -p RandomizedDelayUSec -p TimersCalendar"
    )
    assert "Persistent=yes" in shown
    assert "RandomizedDelayUSec=10min" in shown
    assert "2099-01-01 02:30:00" in shown


def test_timer_run_was_verified_by_restore_in_the_journal(host):
    journal = host.check_output("journalctl -u berth-pg-backup@shop.service --no-pager -o cat")
    assert "verified by restore into berth-pg-verify-shop: 2 tables, 550 rows, 2 checks" in journal
    assert host.check_output("docker ps -aq --filter name=berth-pg-verify") == ""


def test_backups_are_listed_encrypted_0600_with_globals(host):
    newest = listing(host, "shop")[0]
    assert newest["name"].endswith(".dump.age")
    stored = host.file(f"{BACKUPS}/shop/{newest['name']}")
    assert stored.mode == 0o600 and stored.user == "root"
    assert stored.content[:21] == b"age-encryption.org/v1"
    globals_file = host.file(f"{BACKUPS}/shop/{newest['name'].removesuffix('.dump.age')}.globals.sql.age")
    assert globals_file.exists and globals_file.mode == 0o600
    assert host.file(f"{BACKUPS}/shop").mode == 0o700
    assert host.run("grep -rl 'AGE-SECRET-KEY' /etc /root /var/backups /run").stdout == ""


def test_metrics_are_fresh_and_say_verified(host):
    shop = metrics(host, "shop")
    assert time.time() - shop["last_success_timestamp_seconds"] < 1800
    assert shop["last_verified"] == 1 and shop["last_run_success"] == 1
    assert shop["last_size_bytes"] > 0 and shop["last_duration_seconds"] > 0
    assert shop["failures_total"] == 0


def test_retention_keeps_exactly_the_expected_backups_locally_and_remotely(host):
    local = sorted(item["name"] for item in listing(host, "gfs"))
    assert local == GFS_EXPECTED
    remote = sorted(f for f in sftp_host().check_output(f"ls {REMOTE}/gfs").split() if f.endswith(".dump"))
    assert remote == GFS_EXPECTED


def test_off_host_copy_of_the_encrypted_backup_landed(host):
    names = sftp_host().check_output(f"ls {REMOTE}/shop").split()
    assert listing(host, "shop")[-1]["name"] in names


def test_migration_dumps_pruned_by_their_own_count(host):
    left = sorted(host.check_output("ls /srv/berth/shop/backups").split())
    # Stand-ins 1, 2, 72 and 240 hours old (named V<hours>); migration_keep_last 2, keep_daily 1.
    assert {name.rsplit("-before-", 1)[1] for name in left} == {"V1.dump", "V2.dump"}


def test_full_disk_failed_cleanly(host):
    found = host.check_output("ls -A /var/backups/berth/tiny/full").split()
    assert not [name for name in found if "partial" in name]
    dumps = [name for name in found if name.endswith(".dump")]
    assert len(dumps) == 1
    host.check_output(f"pg_restore --list /var/backups/berth/tiny/full/{dumps[0]}")
    full = metrics(host, "full")
    assert full["failures_total"] == 1 and full["last_run_success"] == 0
    assert full["last_success_timestamp_seconds"] > 0


def test_database_down_failed_cleanly(host):
    managed = metrics(host, "managed")
    assert managed["failures_total"] == 1 and managed["last_run_success"] == 0
    assert len(listing(host, "managed")) == 1
    assert not host.run("ls /var/backups/berth/postgres/managed | grep partial").stdout


def test_failure_hook_fired_for_each_failed_run(host):
    assert sorted(host.file(HOOK_LOG).content_string.split()) == ["full", "managed"]


def test_failure_hook_called_the_url_once_per_failed_run_without_secrets(host):
    recorded = host.file(HOOK_REQUESTS).content_string
    requests = [json.loads(line) for line in recorded.splitlines()]
    assert sorted(json.loads(request["body"])["job"] for request in requests) == ["full", "managed"]
    for request in requests:
        assert request["method"] == "POST" and request["path"] == "/berth-hook"
        assert request["headers"]["Content-Type"] == "application/json"
        body = json.loads(request["body"])
        assert body == {"job": body["job"], "host": host.check_output("uname -n"), "status": "failed"}
    assert [secret for secret in SECRETS if secret in recorded] == []


def test_managed_backup_went_over_verified_tls(host):
    journal = host.check_output("journalctl -u berth-pg-backup@managed.service --no-pager -o cat")
    assert "verified by restore into berth-pg-verify-managed: 1 tables, 20000 rows" in journal
    job = json.loads(host.file("/etc/berth/postgres_backup/jobs/managed.json").content_string)
    assert job["sslmode"] == "verify-full" and host.file(job["ca_file"]).exists


def test_restore_brought_the_deleted_row_back_in_a_new_database(host):
    assert host.check_output(f"{PSQL} -d shop_restored -c {ROW_7}") == "1"


def test_live_replace_restored_the_row_and_restarted_the_colour(host):
    assert host.check_output(f"{PSQL} -d shop -c {ROW_7}") == "1"
    assert host.check_output("docker inspect -f '{{.State.Running}}' shop-blue-web-1") == "true"
    # Streamed by the side effect from before the replace (the engine's own history is too short).
    stops = host.file("/run/berth-test-stand-in-stops.txt").content_string
    assert len(stops.split()) == 1
    # The side effect's run, and the fresh backup taken before the replace.
    assert len(listing(host, "shop")) == 2


@pytest.mark.parametrize("secret", ["s3cret-shop-pw", "s3cret-managed-pw"])
def test_passwords_stay_in_0600_files(host, secret):
    assert host.run(f"grep -rl {secret} /etc/systemd/system /etc/berth/postgres_backup/jobs/*.json").stdout == ""
    assert secret not in host.check_output("journalctl --no-pager -o cat")
    password_files = host.check_output(f"grep -rl {secret} /etc/berth").split()
    assert len(password_files) == 1 and host.file(password_files[0]).mode == 0o600
    assert host.file("/etc/berth/postgres_backup/rclone.conf").mode == 0o600
