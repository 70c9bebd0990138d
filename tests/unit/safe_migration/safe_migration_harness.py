"""Helpers for the safe_migration tests and bench/migration_locks.py: clusters and a module runner.

One cluster per test session (initdb as the postgres user into a temporary directory, on a free
loopback port), one fresh database per test. The module runs as a real process with its arguments
in a file, the way Ansible hands them over; Mode 1 arguments come from the action plugin's own
directory loader, so the analysis the tests see is the one the controller computes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import psycopg
from ansible_collections.berth.stack.plugins.plugin_utils import _migration_analysis as analysis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parents[3]
COLLECTIONS = REPO / ".ansible" / "collections"
MODULE = REPO / "plugins" / "modules" / "safe_migration.py"
PASSWORD = "berth-test-secret"  # noqa: S105 - the throwaway test cluster's password


def postgres_bin() -> Path:
    """The newest PostgreSQL installed from Debian's packages."""
    versions = [path for path in Path("/usr/lib/postgresql").glob("*/bin") if re.fullmatch(r"\d+", path.parent.name)]
    if not versions:
        raise RuntimeError("no PostgreSQL under /usr/lib/postgresql (make unit installs Debian's postgresql)")
    return max(versions, key=lambda path: int(path.parent.name))


def as_postgres(argv: list) -> list:
    """initdb and postgres refuse to run as root."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Cluster:
    bin: Path
    port: int
    socket_dir: str
    base: str

    def connect(self, database: str = "postgres", **kwargs) -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", password=PASSWORD, dbname=database, **kwargs
        )


@dataclass
class Authority:
    """A test certificate authority: its certificate file (what sslrootcert names) and its key, in memory."""

    certificate_file: Path
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_authority(directory: Path, stem: str) -> Authority:
    """A self-signed CA, written to ``<directory>/<stem>.crt``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(f"berth test CA {stem}"))
        .issuer_name(_name(f"berth test CA {stem}"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate_file = directory / f"{stem}.crt"
    certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return Authority(certificate_file, certificate, key)


def issue_server_certificate(authority: Authority, directory: Path, address: str) -> tuple[Path, Path]:
    """``server.crt`` and ``server.key``: for the IP address ``address`` only, signed by ``authority``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name("berth test PostgreSQL"))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(IPv4Address(address))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(authority.key, hashes.SHA256())
    )
    certificate_file, key_file = directory / "server.crt", directory / "server.key"
    certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certificate_file, key_file


def start_cluster(authority: Authority | None = None) -> Cluster:
    """initdb into a temporary directory as the postgres user and start it on a free loopback port.

    With ``authority``, the server speaks TLS with a certificate that authority signed for 127.0.0.1 (an IP
    address only, so ``localhost``, the same address here, is a name it is not for), and pg_hba.conf has
    only ``hostssl`` lines: a connection without TLS is refused, as a managed server refuses it.
    """
    bin_dir = postgres_bin()
    base = tempfile.mkdtemp(prefix="berth-pg-")
    data, run = f"{base}/data", f"{base}/run"
    os.makedirs(run)
    with open(f"{base}/pwfile", "w") as handle:
        handle.write(PASSWORD)
    if os.geteuid() == 0:
        for path in (base, run, f"{base}/pwfile"):
            shutil.chown(path, "postgres")
    port = free_port()
    initdb = [str(bin_dir / "initdb"), "-D", data, "-U", "postgres", "--pwfile", f"{base}/pwfile", "--no-sync"]
    initdb += ["--auth-host=scram-sha-256", "--auth-local=trust"]
    subprocess.run(as_postgres(initdb), check=True, capture_output=True)
    options = f"-p {port} -k {run} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60"
    if authority:
        certificate, key = issue_server_certificate(authority, Path(base), "127.0.0.1")
        if os.geteuid() == 0:
            for path in (certificate, key):
                shutil.chown(path, "postgres")
        key.chmod(0o600)
        Path(data, "pg_hba.conf").write_text("local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n")
        options += f" -c ssl=on -c ssl_cert_file={certificate} -c ssl_key_file={key}"
    subprocess.run(
        as_postgres([str(bin_dir / "pg_ctl"), "-D", data, "-l", f"{base}/log", "-o", options, "-w", "start"]),
        check=True,
        capture_output=True,
    )
    return Cluster(bin=bin_dir, port=port, socket_dir=run, base=base)


def stop_cluster(cluster: Cluster) -> None:
    subprocess.run(
        as_postgres([str(cluster.bin / "pg_ctl"), "-D", f"{cluster.base}/data", "-m", "immediate", "-w", "stop"]),
        capture_output=True,
        check=False,  # a cluster that already stopped is what we want
    )
    shutil.rmtree(cluster.base, ignore_errors=True)


def module_process(
    args: dict, tmp_path: Path, check_mode: bool = False, environment: dict | None = None
) -> subprocess.Popen:
    """Start the module with its arguments file, after what the action plugin does first: Mode 1 runs
    the controller-side loader; Mode 2 with sql_files or sql_command runs the module's collecting pass
    and reviews what it read."""
    args = dict(args)
    if "directory" in args:
        args["migrations"] = analysis.load_directory(str(args["directory"]))
        args["directory"] = str(args["directory"])
    if (args.get("sql_files") or args.get("sql_command")) and not args.get("collect_tool_sql"):
        collecting = module_process(dict(args, collect_tool_sql=True), tmp_path, check_mode, environment)
        collected = result_of(collecting, 120)
        if collected.get("failed"):
            return _exited(collected)
        args["tool_sql"] = analysis.review_tool_sql(collected["tool_sql_collected"])
    if check_mode:
        args["_ansible_check_mode"] = True
    args_file = tmp_path / f"args-{uuid.uuid4().hex[:8]}.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    extra = environment or {}
    environment = {**os.environ, **extra}
    # Only a PYTHONPATH the caller passed goes in front (test_psycopg2.py hides psycopg 3 that way).
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [extra.get("PYTHONPATH"), str(COLLECTIONS)]))
    environment["PATH"] = f"{postgres_bin()}:{environment['PATH']}"
    return subprocess.Popen(
        [sys.executable, str(MODULE), str(args_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


def _exited(result: dict) -> subprocess.Popen:
    """A finished process that printed `result`, for a collecting pass that already failed."""
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdout.write(sys.argv[1])", json.dumps(result)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def result_of(process: subprocess.Popen, timeout: float = 60) -> dict:
    stdout, stderr = process.communicate(timeout=timeout)
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"module printed no JSON (exit {process.returncode}): {stdout}\n{stderr}") from None


@dataclass
class Database:
    cluster: Cluster
    name: str

    def connect(self, **kwargs) -> psycopg.Connection:
        return self.cluster.connect(self.name, **kwargs)

    def rows(self, sql: str, params: tuple | None = None) -> list:
        with self.connect(autocommit=True) as connection:
            return connection.execute(sql, params).fetchall()

    def run(self, sql: str) -> None:
        with self.connect(autocommit=True) as connection:
            connection.execute(sql)

    def params(self, **extra) -> dict:
        return {
            "host": "127.0.0.1",
            "port": self.cluster.port,
            "user": "postgres",
            "password": PASSWORD,
            "database": self.name,
            "sslmode": "disable",
            "backup": False,
            **extra,
        }

    def history(self) -> list:
        exists = self.rows("SELECT to_regclass('public.berth_schema_history') IS NOT NULL")[0][0]
        if not exists:
            return []
        return self.rows(
            "SELECT version, description, checksum, execution_ms, applied_by, allowance_reason "
            "FROM berth_schema_history ORDER BY version"
        )


ACCOUNTS = (
    "CREATE TABLE accounts (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text);\n"
    "INSERT INTO accounts (email) SELECT 'user' || n || '@example.test' FROM generate_series(1, 50) n;\n"
)


def columns(database, table: str) -> list:
    return [
        row[0]
        for row in database.rows(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position",
            (table,),
        )
    ]


def hold_lock_on_accounts(database, release: threading.Event, sql: str = "SELECT count(*) FROM accounts"):
    """An application transaction that keeps the lock `sql` took on accounts (ACCESS SHARE) until `release`."""
    ready = threading.Event()

    def hold():
        with database.connect(application_name="long-report") as connection:
            connection.execute(sql)
            ready.set()
            release.wait(30)
            connection.commit()

    thread = threading.Thread(target=hold)
    thread.start()
    assert ready.wait(10)
    return thread


def wait_for(database, sql: str, deadline: float = 60) -> None:
    """Poll until `sql` (a boolean query) is true, so a test follows the module rather than the clock."""
    end = time.monotonic() + deadline
    with database.connect(autocommit=True) as connection:
        while not connection.execute(sql).fetchone()[0]:
            if time.monotonic() > end:
                raise AssertionError(f"not true within {deadline:g} s: {sql}")
            time.sleep(0.02)


MIGRATION_WAITS_FOR_A_LOCK = (
    "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE application_name LIKE 'berth.safe_migration@%' "
    "AND wait_event_type = 'Lock')"
)
RUNNERS_CONNECTED = (
    "SELECT count(*) >= {count} FROM pg_stat_activity WHERE application_name LIKE 'berth.safe_migration@%'"
)


def release_after_a_lock_timeout(database, release: threading.Event, lock_timeout: float) -> threading.Thread:
    """Set `release` once the migration was seen waiting for a lock and had time to hit lock_timeout,
    however long the module process took to start (the machine may be busy)."""

    def watch():
        try:
            wait_for(database, MIGRATION_WAITS_FOR_A_LOCK)
            time.sleep(lock_timeout * 3)
        finally:
            release.set()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread
