"""compose_app's meta/argument_specs.yml, read by ansible's own validator as role argument validation
does: both entry points take the same options, and a data service's types are checked there."""

from pathlib import Path

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

SPECS = yaml.safe_load((Path(__file__).resolve().parents[2] / "roles/compose_app/meta/argument_specs.yml").read_text())
MAIN = SPECS["argument_specs"]["main"]["options"]


def test_rollback_takes_the_options_of_main():
    assert SPECS["argument_specs"]["rollback"]["options"] == MAIN
    assert "compose_app_rollback_release" in MAIN


@pytest.mark.parametrize(
    ("data_services", "message"),
    [
        ([{"name": "db", "image": "pg", "published_port": 15432, "container_port": 5432}], None),
        ([{"name": "db"}], "missing required arguments: image found in compose_app_data_services"),
        ([{"name": "db", "image": "pg", "replicas": 2}], "replicas. Supported parameters include"),
        ([{"name": "db", "image": "pg", "published_port": "high"}], "published_port' is of type"),
    ],
)
def test_data_services_are_typed_by_the_role(data_services, message):
    result = ArgumentSpecValidator(MAIN).validate(
        {
            "compose_app_name": "demo",
            "compose_app_release": "v1",
            "compose_app_services": [{"name": "web"}],
            "compose_app_data_services": data_services,
        }
    )
    errors = " / ".join(str(error) for error in result.errors)
    if message is None:
        assert errors == ""
    else:
        assert message in errors


@pytest.mark.parametrize(
    ("database", "message"),
    [
        ({"host": "db.example.test", "sslmode": "verify-full", "sslrootcert": "/etc/berth/ca.pem"}, None),
        ({"sslcert": "/etc/berth/client.crt", "sslkey": "/etc/berth/client.key", "sslcrl": "/etc/berth/ca.crl"}, None),
        ({"sslmode": "verify"}, "value of sslmode must be one of: disable, allow, prefer"),
        ({"sslrootcert_file": "/etc/berth/ca.pem"}, "sslrootcert_file. Supported parameters include"),
    ],
)
def test_the_database_takes_libpqs_tls_settings(database, message):
    result = ArgumentSpecValidator(MAIN).validate(
        {
            "compose_app_name": "demo",
            "compose_app_release": "v1",
            "compose_app_services": [{"name": "web"}],
            "compose_app_database": {"name": "shop", "user": "shop", **database},
        }
    )
    errors = " / ".join(str(error) for error in result.errors)
    if message is None:
        assert errors == ""
    else:
        assert message in errors
