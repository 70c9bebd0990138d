"""compose_app's image step with compose_app_image_policy=present, through its own images.yml on the
local Docker engine: a reference without a tag counts as its :latest, and a missing image is named."""

import json

from role_tasks import run_role_tasks


def test_present_policy_finds_an_untagged_reference_and_names_a_missing_one(tmp_path):
    variables = {
        "compose_app_name": "imgtest",
        "compose_app_image_policy": "present",
        "compose_app_data_services": [{"name": "db", "image": "berth/debian13-base"}],
        "compose_app_services": [
            {"name": "web", "image": "berth/debian13-base:latest"},
            {"name": "api", "image": "berth-images-test/missing:1"},
        ],
    }
    completed = run_role_tasks(tmp_path, "images.yml", variables)
    assert completed.returncode != 0
    failure = next(line for line in completed.stdout.splitlines() if "fatal:" in line)
    message = json.loads(failure.split("=> ", 1)[1])["msg"]
    assert message.startswith(
        "compose_app_image_policy=present and these images are not on localhost: berth-images-test/missing:1."
    ), message
