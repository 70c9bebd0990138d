"""The images of every recorded release stay on the host for a rollback: each release and service has
a keeper, a created and never started container of the recorded image, which ``docker image prune
--all`` (the docker_host prune timer) does not remove images from. Checked on the real engine by what
Docker reports of the keepers; a real prune runs in the compose_app scenario's own engine, since this
machine's engine holds every test's images."""

import json

from conftest import APP, sh


def keepers():
    """{name: (image reference, image id, status, release label)} of the test app's keepers."""
    ids = sh("docker", "ps", "--all", "--quiet", "--filter", f"label=berth.keep.app={APP}").stdout.split()
    documents = json.loads(sh("docker", "inspect", *ids).stdout) if ids else []
    return {
        document["Name"].lstrip("/"): (
            document["Config"]["Image"],
            document["Image"],
            document["State"]["Status"],
            document["Config"]["Labels"]["berth.keep.release"],
        )
        for document in documents
    }


def test_each_recorded_release_keeps_its_images_in_never_started_containers(state_file, baseline):
    baseline("r2", exact=True)
    recorded = {
        f"{APP}-keep-{entry['release']}-{service}": (record["image"], record["image_id"], "created", entry["release"])
        for entry in state_file()["releases"]
        for service, record in entry["images"].items()
    }
    assert sorted({release for *_image, _status, release in recorded.values()}) == ["r1", "r2"]
    assert keepers() == recorded


def test_a_release_dropped_from_the_history_loses_its_keepers(rollout, release, state_file, baseline):
    baseline("r2", exact=True)
    result = rollout(release("k3", "v1"), "k3", keep_releases=2)
    assert not result.get("failed"), result.get("msg")
    assert [item["release"] for item in state_file()["releases"]] == ["k3", "r2"]
    assert [item["release"] for item in result["pruned_releases"]] == ["r1"]
    assert sorted({release for *_image, _status, release in keepers().values()}) == ["k3", "r2"]
