# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Checks the postgres_backup input on the controller: prints one `variable=value: why` per problem."""

from __future__ import annotations

import json
import os
import re
import sys

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
RETENTION = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly")


def job_problems(index: int, job: dict, known: dict) -> list[str]:
    where = f"postgres_backup_jobs[{index}]"
    problems = []
    if not NAME.match(str(job.get("name", ""))):
        problems.append(f"{where}.name={job.get('name')!r}: lower-case letters, digits, - and _ only")
    sources = [key for key in ("data_service", "container", "host") if job.get(key)]
    if len(sources) != 1:
        problems.append(f"{where}: give exactly one of data_service, container or host (got {sources or 'none'})")
    if job.get("data_service"):
        if not known["app"]:
            problems.append(
                f"{where}.data_service={job['data_service']!r}: postgres_backup_app is empty: no app to look in"
            )
        elif job["data_service"] not in known["data_services"]:
            problems.append(
                f"{where}.data_service={job['data_service']!r}: not a data service of {known['app']} "
                f"(postgres_backup_data_services: {known['data_services']})"
            )
    if job.get("host"):
        if job["sslmode"] not in ("require", "verify-full"):
            problems.append(f"{where}.sslmode={job['sslmode']!r}: require or verify-full")
        if job["sslmode"] == "verify-full" and not job.get("ca_file"):
            problems.append(f"{where}.ca_file='': sslmode=verify-full needs the server's CA certificate file")
        if job.get("ca_file") and not os.path.isfile(job["ca_file"]):
            problems.append(f"{where}.ca_file={job['ca_file']!r}: no such file on the controller")
        if int(job["verify_every"]) > 0 and not job.get("verify_image"):
            problems.append(
                f"{where}.verify_image='': a managed server's backup is verified in a scratch container of this image"
            )
        if not 1 <= int(job["port"]) <= 65535:
            problems.append(f"{where}.port={job['port']}: 1 to 65535")
    values = {key: int(job[key]) for key in RETENTION}
    if any(value < 0 for value in values.values()):
        problems.append(f"{where} retention {values}: no negative counts")
    if not any(values.values()):
        problems.append(f"{where} keep_last/keep_daily/keep_weekly/keep_monthly all 0: every backup would be deleted")
    if int(job["verify_every"]) < 0:
        problems.append(f"{where}.verify_every={job['verify_every']}: 0 (never) or more")
    if int(job["migration_keep_last"]) < 1 and job.get("migration_dumps_dir"):
        problems.append(
            f"{where}.migration_keep_last={job['migration_keep_last']}: keep at least the newest pre-migration dump"
        )
    for recipient in job["age_recipients"]:
        if not re.match(r"^age1[02-9ac-hj-np-z]{58}$", recipient):
            problems.append(f"{where}.age_recipients: {recipient!r} is not an age public key (age1...)")
    if job.get("remote"):
        if ":" not in job["remote"]:
            problems.append(f"{where}.remote={job['remote']!r}: an rclone REMOTE:PATH")
        if not known["rclone_config"]:
            problems.append(
                f"{where}.remote={job['remote']!r}: postgres_backup_rclone_config is empty, so no remote is defined"
            )
    if not isinstance(job["checks"], list) or not all(isinstance(check, str) for check in job["checks"]):
        problems.append(f"{where}.checks: a list of SQL queries")
    return problems


def problems(data: dict) -> list[str]:
    found = []
    names = [job.get("name") for job in data["jobs"]]
    for name in sorted({name for name in names if names.count(name) > 1}):
        found.append(f"postgres_backup_jobs: name {name!r} is used twice")
    for index, job in enumerate(data["jobs"]):
        found += job_problems(index, job, data)
    if not 0 <= int(data["compression"]) <= 9:
        found.append(f"postgres_backup_compression={data['compression']}: 0 to 9")
    if data["on_failure_url"] and not re.match(r"^https?://", data["on_failure_url"]):
        found.append(f"postgres_backup_on_failure_url={data['on_failure_url']!r}: an http:// or https:// URL")
    if int(data["timeout"]) < 60:
        found.append(f"postgres_backup_timeout={data['timeout']}: at least 60 seconds")
    return found


if __name__ == "__main__":
    print("\n".join(problems(json.loads(sys.argv[1]))))
