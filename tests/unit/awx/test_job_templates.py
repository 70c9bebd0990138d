"""playbooks/awx/job_templates.yml, checked without an AWX server.

Every awx.awx module validates its arguments against its argument spec before it opens a
connection. Run against a port where nothing listens, each task must therefore fail on the
connection, never on an argument: an unknown option, a wrong type or choice, a missing required
one would fail first. That checks the arguments as rendered, loops and surveys included.
"""

import json

import pytest
import yaml
from awx_harness import BIN, REPO, run, tool_env

PLAYBOOK = REPO / "playbooks" / "awx" / "job_templates.yml"
ARGUMENT_ERRORS = ("Unsupported parameters", "must be one of", "missing required", "is of type", "value of")


def test_syntax_check():
    result = run([str(BIN / "ansible-playbook"), str(PLAYBOOK), "--syntax-check"], env=tool_env(), cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Each task's result per item, from a copy of the play whose tasks go on after a failure."""
    work = tmp_path_factory.mktemp("awx-templates")
    plays = yaml.safe_load(PLAYBOOK.read_text())
    for task in plays[0]["tasks"]:
        task["ignore_errors"] = True
    # The copy lives elsewhere: it finds the repository (argument specs, playbooks) by this variable.
    plays[0]["vars"]["__berth_awx_repo"] = str(REPO)
    copy = work / "job_templates.yml"
    copy.write_text(yaml.safe_dump(plays, sort_keys=False))
    # Port 9 (discard) on loopback: nothing listens, so every request is refused at once.
    controller = {"CONTROLLER_HOST": "https://127.0.0.1:9", "CONTROLLER_OAUTH_TOKEN": "awxtest-not-a-token"}
    env = {**tool_env(CONTROLLER_VERIFY_SSL="false", ANSIBLE_STDOUT_CALLBACK="ansible.posix.json"), **controller}
    command = [str(BIN / "ansible-playbook"), str(copy), "-e", "berth_awx_scm_url=https://git.example.invalid/p.git"]
    result = run(command, env=env, cwd=REPO)
    tasks = json.loads(result.stdout)["plays"][0]["tasks"]
    by_name = {}
    for task in tasks:
        outcome = task["hosts"]["localhost"]
        by_name[task["task"]["name"]] = outcome.get("results", [outcome])
    return by_name


def test_every_awx_task_gets_as_far_as_the_connection(results):
    awx_tasks = {name: items for name, items in results.items() if name != "The repository to sync is given"}
    assert len(awx_tasks) == 8, sorted(results)
    for name, items in awx_tasks.items():
        for item in items:
            message = item.get("msg", "")
            assert not any(error in message for error in ARGUMENT_ERRORS), f"{name}: {message}"
            assert item.get("failed") is True, f"{name}: {item}"
            assert "connect" in message.lower() or "network" in message.lower(), f"{name}: {message}"


def test_one_template_per_environment_and_existing_playbook(results):
    labels = sorted(item["item"][0] + " " + item["item"][1]["name"] for item in results["Create the job templates"])
    names = ("backup-now", "deploy", "preflight", "provision", "restore", "rollback")
    expected = [f"{environment} {name}" for environment in ("prod", "staging") for name in names]
    assert labels == sorted(expected)
    for item in results["Create the job templates"]:
        assert (REPO / item["item"][1]["playbook"]).is_file()


def test_surveys_ask_for_variables_the_playbooks_read(results):
    surveys = {item["item"][1]["name"]: item["item"][1]["questions"] for item in results["Create the job templates"]}
    assert [q["variable"] for q in surveys["deploy"]] == ["product_release"]
    assert "product_release | default" in (REPO / "inventories" / "shared" / "product.yml").read_text()
    rollback = surveys["rollback"]
    assert [q["variable"] for q in rollback] == ["compose_app_rollback_release"]
    specs = yaml.safe_load((REPO / "roles" / "compose_app" / "meta" / "argument_specs.yml").read_text())
    option = specs["argument_specs"]["rollback"]["options"]["compose_app_rollback_release"]
    assert rollback[0]["question_description"] == option["description"]
    assert rollback[0]["required"] is False
    assert surveys["provision"] == []


@pytest.mark.parametrize(("template", "entry_point"), [("backup-now", "backup"), ("restore", "restore")])
def test_backup_surveys_ask_for_options_of_the_entry_point_their_playbook_runs(results, template, entry_point):
    """Each question sets an option of the postgres_backup entry point, described and required as its spec says."""
    surveys = {item["item"][1]["name"]: item["item"] for item in results["Create the job templates"]}
    playbook = yaml.safe_load((REPO / surveys[template][1]["playbook"]).read_text())
    included = playbook[0]["tasks"][0]["ansible.builtin.include_role"]
    assert (included["name"], included["tasks_from"]) == ("berth.stack.postgres_backup", entry_point)
    specs = yaml.safe_load((REPO / "roles" / "postgres_backup" / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"][entry_point]["options"]
    questions = surveys[template][1]["questions"]
    assert questions
    for question in questions:
        option = options[question["variable"]]
        assert question["question_description"] == option["description"], question
        assert question["required"] is option.get("required", False), question
    if template == "restore":
        asked = [question["variable"] for question in questions]
        assert asked == [
            "postgres_backup_restore_job",
            "postgres_backup_restore_backup",
            "postgres_backup_restore_database",
            "postgres_backup_restore_replace_live",
        ]


def test_workflow_runs_deploy_after_provision(results):
    workflows = results["Create the provision -> deploy workflow"]
    assert sorted(item["item"] for item in workflows) == ["prod", "staging"]
    for workflow in workflows:
        nodes = {node["identifier"]: node for node in workflow["invocation"]["module_args"]["workflow_nodes"]}
        assert nodes["provision"]["related"]["success_nodes"] == [{"identifier": "deploy"}]
        assert nodes["provision"]["unified_job_template"]["name"] == f"berth.stack {workflow['item']} provision"
        assert nodes["deploy"]["unified_job_template"]["name"] == f"berth.stack {workflow['item']} deploy"
