# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller half of berth.stack.safe_migration: read and lint the migration files, then run the module.

Parsing happens here, with pglast, so target hosts need no SQL parser: the module receives each file's
statements, checksum, allowances and findings in its ``migrations`` option.
"""

from __future__ import annotations

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.module_utils.basic import missing_required_lib
from ansible.plugins.action import ActionBase
from ansible_collections.berth.stack.plugins.plugin_utils import _migration_analysis as analysis


class ActionModule(ActionBase):
    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        if "migrations" in args:
            raise AnsibleActionFail("migrations: filled in by the action plugin from directory; do not set it")
        if args.get("directory"):
            if not analysis.HAS_PGLAST:
                raise AnsibleActionFail(missing_required_lib("pglast") + " (on the controller)")
            args["directory"] = self._controller_directory(args["directory"])
            try:
                args["migrations"] = analysis.load_directory(args["directory"])
            except analysis.MigrationFileError as error:
                raise AnsibleActionFail(str(error)) from error
        module_result = self._execute_module(
            module_name="berth.stack.safe_migration", module_args=args, task_vars=task_vars
        )
        result.update(module_result)
        return result

    def _controller_directory(self, directory: str) -> str:
        """An absolute path as is; a relative one is searched like a `files` path (role, then playbook)."""
        try:
            return self._find_needle("files", directory)
        except AnsibleError as error:
            raise AnsibleActionFail(f"directory: {directory} was not found on the controller ({error})") from error
