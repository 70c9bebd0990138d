"""A rollback's images, through compose_app's own recorded_images.yml on the local Docker engine.

A recorded release names its images by reference and records their IDs. A prune of an image in use
that several references name removes all but one of them (keepers hold IDs, not tags), and a person
may untag one; compose then fails with "No such image" in `up --pull never`. The role must tag the
recorded ID with the reference again, and refuse before anything changes when the image is gone and
cannot be pulled.
"""

import json
import subprocess
import uuid

import pytest
from role_tasks import run_role_tasks

BASE = "berth/debian13-base:latest"


def docker(*argv, check=True):
    return subprocess.run(["docker", *argv], capture_output=True, text=True, check=check)


def image_id(reference):
    found = docker("image", "inspect", "--format", "{{.Id}}", reference, check=False)
    return found.stdout.strip() if found.returncode == 0 else None


@pytest.fixture
def reference():
    """A reference no image has yet; removed afterwards (only the tag: the image is the base image)."""
    name = f"berth-rollback-test-{uuid.uuid4().hex[:8]}/backend:r1"
    yield name
    docker("rmi", name, name + "-worker", check=False)


def rollback_to(images, policy="present"):
    return {
        "compose_app_name": "rbtest",
        "compose_app_image_policy": policy,
        "__compose_app_rollback": {"release": "r1", "images": images},
    }


def record(reference, image, digests=()):
    return {"image": reference, "image_id": image, "repo_digests": list(digests)}


def test_a_recorded_image_that_lost_its_reference_gets_it_back(tmp_path, reference):
    recorded = image_id(BASE)
    assert image_id(reference) is None
    completed = run_role_tasks(tmp_path, "recorded_images.yml", rollback_to({"backend": record(reference, recorded)}))
    assert completed.returncode == 0, completed.stdout[-3000:]
    assert image_id(reference) == recorded
    again = run_role_tasks(tmp_path, "recorded_images.yml", rollback_to({"backend": record(reference, recorded)}))
    assert "changed=0" in again.stdout, again.stdout[-3000:]


def test_a_reference_moved_to_another_image_names_the_recorded_one_again(tmp_path, reference):
    docker("tag", "berth/debian12-base:latest", reference)
    recorded = image_id(BASE)
    completed = run_role_tasks(tmp_path, "recorded_images.yml", rollback_to({"backend": record(reference, recorded)}))
    assert completed.returncode == 0, completed.stdout[-3000:]
    assert image_id(reference) == recorded


def test_check_mode_reports_the_tag_and_makes_none(tmp_path, reference):
    recorded = image_id(BASE)
    completed = run_role_tasks(
        tmp_path, "recorded_images.yml", rollback_to({"backend": record(reference, recorded)}), check=True
    )
    assert completed.returncode == 0, completed.stdout[-3000:]
    assert "changed=1" in completed.stdout
    assert image_id(reference) is None


GONE = "sha256:" + "0" * 64


@pytest.mark.parametrize(
    ("policy", "digests", "why"),
    [
        (
            "present",
            ["registry.example/shop/backend@sha256:" + "1" * 64],
            "compose_app_image_policy=present pulls nothing",
        ),
        ("pull", [], "no registry digest was recorded for it (a loaded image)"),
    ],
)
def test_an_image_that_is_gone_and_cannot_be_pulled_is_refused_naming_it(tmp_path, reference, policy, digests, why):
    present = image_id(BASE)
    images = {"backend": record(reference, GONE, digests), "worker": record(reference + "-worker", present)}
    completed = run_role_tasks(tmp_path, "recorded_images.yml", rollback_to(images, policy))
    assert completed.returncode != 0
    failure = next(line for line in completed.stdout.splitlines() if "fatal:" in line)
    message = json.loads(failure.split("=> ", 1)[1])["msg"]
    assert message.startswith(
        f"Rollback to r1: the image of service backend ({reference}, {GONE}) is gone from localhost"
    )
    assert why in message
    assert message.endswith("Nothing was changed.")
    # Refused before any tag: the worker's reference, which only needed a tag, is not made either.
    assert image_id(reference + "-worker") is None
