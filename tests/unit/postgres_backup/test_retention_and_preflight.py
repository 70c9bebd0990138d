"""The pure parts of postgres_backup: GFS retention, row-count comparison, and the preflight checks."""

import importlib.util
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

FILES = Path(__file__).resolve().parents[3] / "roles" / "postgres_backup" / "files"


def load(name: str, filename: str):
    spec = importlib.util.spec_from_file_location(name, FILES / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


backup = load("berth_pg_backup", "berth_pg_backup.py")
preflight = load("postgres_backup_preflight", "postgres_backup_preflight.py")
NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)  # a Sunday; its ISO week starts on 9 March


def at(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def daily_since_new_year() -> list[datetime]:
    return [at("2026-01-01 01:00") + timedelta(days=n) for n in range(73)] + [at("2026-03-15 06:00")]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ((2, 0, 0, 0), ["2026-03-15 06:00", "2026-03-14 01:00"]),
        ((0, 3, 0, 0), ["2026-03-15 06:00", "2026-03-14 01:00", "2026-03-13 01:00"]),
        ((0, 0, 2, 0), ["2026-03-15 06:00", "2026-03-08 01:00"]),
        ((0, 0, 0, 3), ["2026-03-15 06:00", "2026-02-28 01:00", "2026-01-31 01:00"]),
        ((1, 1, 1, 1), ["2026-03-15 06:00"]),
    ],
)
def test_gfs_keeps_the_newest_of_each_period(policy, expected):
    kept = backup.gfs_keep(daily_since_new_year(), NOW, *policy)
    assert sorted(kept, reverse=True) == [at(text) for text in expected]


def test_gfs_keeps_nothing_outside_every_window():
    old = [at("2025-01-10 03:00"), at("2025-02-10 03:00")]
    assert backup.gfs_keep(old, NOW, 0, 30, 8, 6) == set()
    assert backup.gfs_keep(old, NOW, 1, 30, 8, 6) == {at("2025-02-10 03:00")}


def test_counts_differ_names_each_table():
    assert backup.counts_differ({"public.a": 3, "public.b": 1}, {"public.a": 3, "public.b": 1}) == []
    problems = backup.counts_differ({"public.a": 3, "public.b": 1}, {"public.a": 2, "public.c": 5})
    assert problems == [
        "public.a: source 3 != restored 2",
        "public.b: source 1 != restored missing",
        "public.c: source missing != restored 5",
    ]


def job(**overrides):
    values = {
        "name": "shop", "database": "shop", "data_service": "db", "sslmode": "verify-full", "ca_file": "",
        "port": 5432, "keep_last": 3, "keep_daily": 30, "keep_weekly": 8, "keep_monthly": 6, "verify_every": 1,
        "verify_image": "", "migration_keep_last": 5, "migration_dumps_dir": "", "age_recipients": [], "remote": "",
        "checks": [],
    }  # fmt: skip
    return values | overrides


def problems(jobs, **overrides):
    data = {"jobs": jobs, "app": "shop", "data_services": ["db"], "rclone_config": False, "compression": 6}
    return preflight.problems(data | {"on_failure_url": "", "timeout": 7200} | overrides)


def test_preflight_accepts_a_plain_job():
    assert problems([job()]) == []


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        (job(data_service="cache"), "postgres_backup_jobs[0].data_service='cache': not a data service of shop"),
        (job(keep_last=0, keep_daily=0, keep_weekly=0, keep_monthly=0), "all 0: every backup would be deleted"),
        (job(name="Shop DB"), "postgres_backup_jobs[0].name='Shop DB'"),
        (
            job(data_service="", host="db.example", verify_image="pg:17"),
            "postgres_backup_jobs[0].ca_file='': sslmode=verify-full needs",
        ),
        (job(data_service="", host="db.example", sslmode="require"), "postgres_backup_jobs[0].verify_image=''"),
        (job(age_recipients=["not-a-key"]), "'not-a-key' is not an age public key"),
        (job(remote="s3:bucket"), "postgres_backup_rclone_config is empty"),
        (job(container="other"), "give exactly one of data_service, container or host"),
    ],
)
def test_preflight_names_the_variable(bad, named):
    found = problems([bad])
    assert len(found) == 1 and named in found[0]


def test_preflight_lists_every_problem_at_once():
    found = problems([job(), job()], compression=12, on_failure_url="ftp://x")
    assert found == [
        "postgres_backup_jobs: name 'shop' is used twice",
        "postgres_backup_compression=12: 0 to 9",
        "postgres_backup_on_failure_url='ftp://x': an http:// or https:// URL",
    ]
