"""Runs after every other test of the scenario (the file's name sorts last), since it removes things: the
demo's idle color's stopped containers, then what the host's prune timer does (docker image prune --all,
here without its age filter, on the test host's own engine). The images of every recorded release of the
demo (loaded, compose_app_image_policy=present) stay, by the references their compose files name, held
by the releases' keepers, so a rollback to any of them can start."""

import json

testinfra_hosts = ["ansible://compose_app-debian13"]


def state(host):
    return json.loads(host.file("/srv/berth/demo/state.json").content_string)


def test_a_prune_of_all_unused_images_leaves_each_recorded_releases_images(host):
    releases = state(host)["releases"]
    idle = "green" if state(host)["active"]["color"] == "blue" else "blue"
    idle_containers = f"docker ps --all --quiet --filter label=com.docker.compose.project=demo-{idle}"
    host.check_output(f"docker rm --force $({idle_containers})")
    host.check_output("docker image prune --all --force")
    for entry in releases:
        for service, record in entry["images"].items():
            # By the reference the release's compose file names: prune also removes unused tags of used images.
            kept = host.run(f"docker image inspect --format '{{{{.Id}}}}' {record['image']}")
            assert kept.rc == 0 and kept.stdout.strip() == record["image_id"], (entry["release"], service, kept.stderr)
    keepers = host.check_output("docker ps --all --filter label=berth.keep.app=demo --format '{{.Names}} {{.State}}'")
    assert sorted(keepers.splitlines()) == sorted(
        f"demo-keep-{entry['release']}-{service} created" for entry in releases for service in entry["images"]
    )
