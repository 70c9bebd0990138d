# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # The connection options of every berth.stack module that connects to PostgreSQL, as
    # plugins/module_utils/_postgres.py connection_argument_spec() defines them.
    DOCUMENTATION = r"""
options:
  host:
    description:
      - Host name, IP address or socket directory of the server (libpq C(host)).
      - Like every connection option here, it falls back to its libpq environment variable on the target
        (C(PGHOST), C(PGPORT), C(PGDATABASE), C(PGUSER), C(PGPASSWORD), C(PGSSLMODE), C(PGSSLROOTCERT), C(PGSSLCERT),
        C(PGSSLKEY), C(PGSSLCRL)).
    type: str
  port:
    description: Server port.
    type: int
  database:
    description: Database name.
    type: str
    aliases: [db]
  user:
    description: Role to connect as.
    type: str
  password:
    description: Password of O(user); never logged.
    type: str
  sslmode:
    description:
      - libpq C(sslmode). A managed server is reached with V(verify-full) and O(sslrootcert), so that both its
        certificate and its name are verified.
    type: str
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
  sslrootcert:
    description:
      - File on the target of the certificate authorities the server's certificate is verified against (libpq
        C(sslrootcert)), for example the provider's CA bundle.
      - "Like O(sslcert), O(sslkey) and O(sslcrl): an absolute path of a readable file, checked before connecting;
        a problem fails the module naming the option and the path. Client programs (C(pg_dump)) get it as
        C(PGSSLROOTCERT)."
    type: path
  sslcert:
    description:
      - Client certificate file on the target, for a server that authenticates clients by certificate
        (libpq C(sslcert)).
    type: path
  sslkey:
    description:
      - Private key file of O(sslcert) on the target (libpq C(sslkey)). Only its path is passed on; the module
        never reads it.
      - libpq refuses a key file that others can read (mode C(0600), or C(0640) when owned by root).
    type: path
  sslcrl:
    description:
      - Certificate revocation list file on the target (libpq C(sslcrl)); a revoked server certificate is refused.
    type: path
  uri:
    description:
      - A libpq connection URI (C(postgresql://user@host:port/db)); the individual options override its parts.
      - Never logged, since it may carry a password.
    type: str
"""
