"""`make test`'s lane runner: lanes run side by side, a lane stops at its first failure while the
others go on, and a scenario missing from every lane fails the run instead of being skipped."""

import importlib.util
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
spec = importlib.util.spec_from_file_location("berth_lanes", REPO / "tests" / "harness" / "lanes.py")
lanes = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = lanes
spec.loader.exec_module(lanes)


def fake_stage(record: Path):
    """A stage command that records when it ran; `fail-*` stages exit 3. Real processes, no mocks."""

    def command(stage):
        script = f'echo "== stage {stage}: start"; echo "{stage} $(date +%s.%N)" >> {record}; sleep 1; '
        script += (
            f'echo "FAILED tests/unit/test_x.py::test_y - assert 1 == 2"; echo "last words of {stage}"; exit 3'
            if stage.startswith("fail")
            else f'echo "  {stage}  ok  1s"; echo "{stage} $(date +%s.%N)" >> {record}'
        )
        return ["bash", "-c", script]

    return command


def run_lanes(tmp_path, spec):
    record = tmp_path / "record.txt"
    lock = threading.Lock()
    threads = [
        lanes.Lane(name, stages, lock, log_dir=tmp_path, command=fake_stage(record))
        for name, stages in lanes.parse_lanes(spec).items()
    ]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return threads, time.monotonic() - start, record.read_text().split("\n")


def test_lanes_run_side_by_side_and_each_keeps_its_own_log(tmp_path, capsys):
    threads, elapsed, _record = run_lanes(tmp_path, ["a=one,two", "b=three,four"])
    # Two stages of 1 s per lane: about 2 s side by side, 4 s one after the other.
    assert elapsed < 3.5, elapsed
    assert [thread.failed for thread in threads] == [None, None]
    assert (tmp_path / "lane-a.log").read_text().count(" ok ") == 2
    assert "three" in (tmp_path / "lane-b.log").read_text()
    assert "three" not in (tmp_path / "lane-a.log").read_text()
    printed = capsys.readouterr().out
    assert "[a] == stage one: start" in printed
    assert "[b]   four  ok  1s" in printed


def test_each_stage_gets_an_apt_cache_of_its_own_named_after_it_whichever_lane_runs_it(tmp_path):
    record = tmp_path / "caches.txt"

    def command(stage):
        return ["bash", "-c", f'echo "{stage} $BERTH_APT_CACHE_DIR" >> {record}']

    lock = threading.Lock()
    for name, stages in (("a", ["molecule:nginx", "lint"]), ("b", ["molecule:fleet"]), ("c", ["molecule:nginx"])):
        lane = lanes.Lane(name, stages, lock, log_dir=tmp_path, command=command)
        lane.start()
        lane.join()
    assert record.read_text().splitlines() == [
        "molecule:nginx /var/cache/berth-test/apt-nginx",
        "lint /var/cache/berth-test/apt-lint",
        "molecule:fleet /var/cache/berth-test/apt-fleet",
        "molecule:nginx /var/cache/berth-test/apt-nginx",
    ]


def test_a_failed_stage_stops_its_lane_and_the_other_lane_goes_on(tmp_path, capsys):
    threads, _elapsed, record = run_lanes(tmp_path, ["a=fail-first,never", "b=one,two"])
    assert threads[0].failed == "fail-first"
    assert threads[1].failed is None
    ran = {line.split()[0] for line in record if line}
    assert ran == {"fail-first", "one", "two"}
    assert "[a] FAILED: fail-first (exit 3); this lane stops here" in capsys.readouterr().out
    lanes.report_failures(threads)
    report = capsys.readouterr().out
    # The failure is repeated at the end of the output, where a reader of its tail finds it.
    assert report.index("==== lane a: what failed in fail-first") < report.index(
        "FAILED tests/unit/test_x.py::test_y - assert 1 == 2"
    )
    assert report.endswith("last words of fail-first\n")
    assert "lane b" not in report
    # The short brief `make test` prints after the stage times.
    lanes.write_brief(threads, tmp_path / "failures.txt")
    assert (tmp_path / "failures.txt").read_text() == (
        "==== what failed: lane a, fail-first\nFAILED tests/unit/test_x.py::test_y - assert 1 == 2\n"
    )


def test_the_brief_cuts_long_lines_and_is_absent_when_nothing_failed(tmp_path):
    threads, _elapsed, _record = run_lanes(tmp_path, ["a=one"])
    brief = tmp_path / "failures.txt"
    brief.write_text("from an older run")
    lanes.write_brief(threads, brief)
    assert not brief.exists()
    threads[0].failed = "one"
    threads[0].failure_lines.extend(["fatal: [h]: FAILED! => " + "x" * 5000 + "\n"])
    lanes.write_brief(threads, brief)
    lines = brief.read_text().splitlines()
    assert lines[0] == "==== what failed: lane a, one"
    assert len(lines[1]) == lanes.BRIEF_WIDTH + len(" [...]")
    assert lines[1].endswith("x [...]")


def test_an_ansible_failure_is_reported_after_its_task_and_retries_are_not_failures(tmp_path):
    lane = lanes.Lane("a", ["one"], threading.Lock(), log_dir=tmp_path)
    log = [
        "TASK [Wait until the server is healthy] ****************************\n",
        "FAILED - RETRYING: [h]: Wait until the server is healthy (60 retries left).\n",
        "ok: [h]\n",
        "TASK [Write the secrets] *******************************************\n",
        "ok: [h] => (item=(censored due to no_log))\n",
        'failed: [h] (item=(censored due to no_log)) => {"censored": "hidden", "changed": false}\n',
        'failed: [h] (item=(censored due to no_log)) => {"censored": "hidden", "changed": false}\n',
        "ERROR    Ansible return code was 2\n",
    ]
    for line in log:
        lane.note_failure(line)
    assert list(lane.failure_lines) == [
        "TASK [Write the secrets]\n",
        log[5],
        log[6],
        log[7],
    ]


def test_the_brief_keeps_the_last_failures_where_a_run_stopped(tmp_path):
    lane = lanes.Lane("a", ["one"], threading.Lock(), log_dir=tmp_path)
    for number in range(lanes.FAILURE_LINES + 5):
        lane.note_failure(f"TASK [expected failure {number}] ***\n")
        lane.note_failure(f"fatal: [h]: FAILED! => {{}} number {number}\n")
        lane.note_failure("...ignoring\n")
    lane.note_failure("TASK [the real one] ***\n")
    lane.note_failure("fatal: [h]: FAILED! => {} the real one\n")
    lane.failed = "one"
    lanes.write_brief([lane], tmp_path / "failures.txt")
    lines = (tmp_path / "failures.txt").read_text().splitlines()
    assert len(lines) == 1 + lanes.BRIEF_LINES
    assert lines[-2:] == ["TASK [the real one]", "fatal: [h]: FAILED! => {} the real one"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (["a=lint"], "scenarios in no lane: compose_app"),
        (["a=molecule:nope"], "scenarios that do not exist: nope"),
        (["a=molecule:nginx", "b=molecule:nginx"], "scenarios in more than one lane: nginx"),
    ],
)
def test_every_scenario_runs_in_exactly_one_lane(spec, message):
    with pytest.raises(SystemExit, match=message):
        lanes.check_scenarios(lanes.parse_lanes(spec))


def test_the_makefile_lanes_name_every_scenario():
    makefile = (REPO / "Makefile").read_text()
    names = ("app", "hosts")
    specs = [f"{name}={makefile.split(f'LANE_{name.upper()} := ')[1].splitlines()[0]}" for name in names]
    lanes.check_scenarios(lanes.parse_lanes(specs))


@pytest.mark.parametrize("spec", ["=lint", "a=", "nolane"])
def test_a_malformed_lane_is_refused(spec):
    with pytest.raises(SystemExit, match="expected a new NAME=STAGE"):
        lanes.parse_lanes([spec])


def test_every_stage_gets_the_same_payload_cache_and_the_harness_callbacks(tmp_path, monkeypatch):
    record = tmp_path / "env.txt"
    monkeypatch.setenv("ANSIBLE_CALLBACK_PLUGINS", "/srv/callbacks")

    def command(stage):
        return ["bash", "-c", f'echo "{stage} $BERTH_ANSIBALLZ_CACHE $ANSIBLE_CALLBACK_PLUGINS" >> {record}']

    env = lanes.payload_cache_env(str(tmp_path / "payloads"))
    lock = threading.Lock()
    for name, stages in (("a", ["lint", "molecule:nginx"]), ("b", ["unit-other"])):
        lane = lanes.Lane(name, stages, lock, log_dir=tmp_path, command=command, env=env)
        lane.start()
        lane.join()
    callbacks = f"{REPO}/tests/harness/callback_plugins:/srv/callbacks"
    assert record.read_text().splitlines() == [
        f"{stage} {tmp_path}/payloads {callbacks}" for stage in ("lint", "molecule:nginx", "unit-other")
    ]
