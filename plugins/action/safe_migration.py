# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller half of berth.stack.safe_migration: read and lint the migration files, then run the module.

Parsing happens here, with pglast, so target hosts need no SQL parser: the module receives each file's
statements, checksum, allowances and findings in its ``migrations`` option. In Mode 2 with sql_files or
sql_command, a first module run on the target reads the SQL the app's tool would apply; it is analysed
here and handed to the second run in ``tool_sql``.
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
        for internal in ("migrations", "tool_sql", "collect_tool_sql"):
            if internal in args:
                raise AnsibleActionFail(f"{internal}: filled in by the action plugin; do not set it")
        if args.get("directory"):
            if not analysis.HAS_PGLAST:
                raise AnsibleActionFail(missing_required_lib("pglast") + " (on the controller)")
            args["directory"] = self._controller_directory(args["directory"])
            try:
                args["migrations"] = analysis.load_directory(args["directory"])
            except analysis.MigrationFileError as error:
                raise AnsibleActionFail(str(error)) from error
        if args.get("command") and (args.get("sql_files") or args.get("sql_command")):
            if not analysis.HAS_PGLAST:
                raise AnsibleActionFail(missing_required_lib("pglast") + " (on the controller)")
            # First pass on the target: read the SQL the app's tool would apply (new files of the new
            # image, the output of sql_command); it is judged here, then the module runs for real.
            collected = self._execute_module(
                module_name="berth.stack.safe_migration",
                module_args=dict(args, collect_tool_sql=True),
                task_vars=task_vars,
            )
            if collected.get("failed"):
                result.update(collected)
                return result
            args["tool_sql"] = analysis.review_tool_sql(collected["tool_sql_collected"])
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
