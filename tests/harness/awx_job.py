"""Run a playbook of the project the way an AWX job runs it: ansible-runner over a private data dir.

AWX copies the synced project to <private data dir>/project, writes the inventory, env/extravars
(the survey's answers), env/passwords (the vault credential answers the "Vault password:" prompt of
--ask-vault-pass), env/cmdline and env/envvars (its own collections path, which replaces
ansible.cfg's), runs ansible-playbook through ansible-runner in project/ and keeps the job events.
This module writes such a directory and runs one job in it. The ansible-runner tests (tests/unit/awx)
import it; Molecule scenarios run it as a command with a job description in JSON:

    python3 awx_job.py JOB.json      prints {"status", "ok_tasks", "stats", "leaked", "stdout_tail"}

where JOB.json holds pdd, playbook, hosts ({group: {host: vars}}), group_vars ({path under
inventory/group_vars: vars}, as "all/main.yml" or "docker_hosts.yml"), group_vars_from (an
inventory directory of the project whose group_vars files are linked in, as "inventories/local"),
group_vars_links ({path under inventory/group_vars: path inside the project}), vault (vars encrypted into
group_vars/all/vault.yml), vault_answer (what the vault credential answers; the test password if
absent), ssh_key (the machine credential: a private key file, which ansible-runner adds to an
ssh-agent for the job, as AWX does) and extravars. "leaked" names every vault value found in the
events or the job's stdout.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"
# The password the committed inventories/*/group_vars/all/vault.yml files are encrypted with.
TEST_VAULT_PASSWORD = (REPO / "tests" / "fixtures" / "vault-password").read_text().strip()


def run(argv, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=1800, **kwargs)


def tool_env(**extra):
    """The virtualenv's tools first on PATH, no colours, and no ANSIBLE_* setting of the caller (the Makefile's
    collections path, Molecule's callbacks and roles path): ansible reads the ansible.cfg of the directory it
    runs in, as it does in a clone and in AWX."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("ANSIBLE_", "MOLECULE_"))}
    env.update({"PATH": f"{BIN}:{os.environ['PATH']}", "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"})
    return {**env, **extra}


def copy_project(destination: Path) -> None:
    """What an AWX project sync checks out: the files git tracks (and new unignored ones), links kept as links."""
    files = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO)
    if files.returncode:
        raise RuntimeError(f"git ls-files failed: {files.stderr}")
    destination.mkdir(parents=True)
    copy = subprocess.run(
        ["rsync", "-a", "--from0", "--files-from=-", "--ignore-missing-args", "./", f"{destination}/"],
        input=files.stdout,
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    if copy.returncode:
        raise RuntimeError(f"copying the project failed: {copy.stderr}")


def write_private_data_dir(pdd: Path, job: dict) -> None:
    """The directory AWX hands to ansible-runner for one job, from a job description (see the module doc)."""
    copy_project(pdd / "project")
    inventory = pdd / "inventory"
    group_vars = inventory / "group_vars"
    (group_vars / "all").mkdir(parents=True)
    hosts = {group: {"hosts": members} for group, members in job["hosts"].items()}
    (inventory / "hosts.json").write_text(json.dumps(hosts))
    # An inventory of the project lends its group variables, file by file, as links into the project.
    if job.get("group_vars_from"):
        source = pdd / "project" / job["group_vars_from"] / "group_vars"
        for path in sorted(source.rglob("*.yml")):
            link = group_vars / path.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
    for name, target in job.get("group_vars_links", {}).items():
        (group_vars / name).symlink_to(pdd / "project" / target)
    for name, variables in job.get("group_vars", {}).items():
        (group_vars / name).write_text(json.dumps(variables))
    if job.get("vault"):
        vault = group_vars / "all" / "vault.yml"
        vault.write_text(json.dumps(job["vault"]))
        password_file = pdd / "vault-password-for-encrypting"
        password_file.write_text(TEST_VAULT_PASSWORD)
        command = [str(BIN / "ansible-vault"), "encrypt", "--vault-password-file", str(password_file), str(vault)]
        encrypted = run(command, env=tool_env())
        password_file.unlink()
        if encrypted.returncode or not vault.read_text().startswith("$ANSIBLE_VAULT;1.1;AES256"):
            raise RuntimeError(f"ansible-vault encrypt failed: {encrypted.stderr}")
    env = pdd / "env"
    env.mkdir()
    (env / "extravars").write_text(json.dumps(job.get("extravars", {})))
    answer = job.get("vault_answer", TEST_VAULT_PASSWORD)
    (env / "passwords").write_text(json.dumps({r"^Vault password:\s*?$": answer}))
    (env / "cmdline").write_text("--ask-vault-pass")
    if job.get("ssh_key"):
        (env / "ssh_key").touch(mode=0o600)
        (env / "ssh_key").write_text(Path(job["ssh_key"]).read_text())
    # AWX's own collections path replaces ansible.cfg's: what requirements.yml installed, then the defaults.
    awx_collections = [f"{pdd}/requirements_collections", "~/.ansible/collections", "/usr/share/ansible/collections"]
    (env / "envvars").write_text(json.dumps({"ANSIBLE_COLLECTIONS_PATH": ":".join(awx_collections)}))


def run_job(pdd: Path, playbook: str, ident: str = "job1"):
    """Run one job; returns its status, its events in order, everything it printed, and its stdout."""
    command = [str(BIN / "ansible-runner"), "run", str(pdd), "--playbook", playbook, "--ident", ident]
    result = run(command, env=tool_env())
    artifacts = pdd / "artifacts" / ident
    if not (artifacts / "status").exists():
        raise RuntimeError(f"ansible-runner left no status: {result.stdout[-3000:]}{result.stderr[-3000:]}")
    paths = sorted((artifacts / "job_events").glob("*.json"))
    events = sorted((json.loads(path.read_text()) for path in paths), key=lambda event: event["counter"])
    stdout = (artifacts / "stdout").read_text()
    everything = "".join(path.read_text() for path in paths) + stdout
    return (artifacts / "status").read_text().strip(), events, everything, stdout


def leaked(secret: str, text: str) -> bool:
    """The secret as it is, or as JSON writes it (escaped quotes and backslashes, \\u escapes) in an event."""
    forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    return any(form in text for form in forms)


def summary(job: dict, status: str, events: list, everything: str, stdout: str) -> dict:
    stats = [event["event_data"] for event in events if event["event"] == "playbook_on_stats"]
    return {
        "status": status,
        "ok_tasks": sorted({event["event_data"]["task"] for event in events if event["event"] == "runner_on_ok"}),
        "stats": {key: stats[-1].get(key, {}) for key in ("ok", "changed", "failures", "dark")} if stats else {},
        "leaked": sorted(name for name, value in job.get("vault", {}).items() if leaked(str(value), everything)),
        "stdout_tail": stdout[-4000:] if status != "successful" else "",
    }


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[1]).read_text())
    pdd = Path(job["pdd"])
    write_private_data_dir(pdd, job)
    print(json.dumps(summary(job, *run_job(pdd, job["playbook"]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
