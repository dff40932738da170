"""Action plugin: make sure distribution packages are installed, asking dpkg first.

    - name: Common | Base packages
      packages_present:
        name: [curl, chrony]
        update_cache: true
        cache_valid_time: 3600
        install_recommends: false

Takes the arguments of ansible.builtin.apt with `state: present` (the default). It first
asks dpkg, in one `dpkg-query` on the host, whether every package is installed; when all
are, the task is done (ok, nothing changed, apt not run). Otherwise it runs
ansible.builtin.apt with the task's arguments unchanged, which installs what is missing
and reports as apt does.

Why: the apt module opens the whole package cache and takes about a second of the host's
CPU even when nothing is missing; a site has a dozen such tasks per host, the largest part
of a no-op drift re-run (docs/benchmarks/noop-rerun.md). dpkg-query answers in
milliseconds. Version pins (`name=1.2*`), other states and anything dpkg does not answer
for plainly (virtual packages, half-installed ones) go straight to apt, so the result is
always what apt alone would do.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

# Package names as dpkg accepts them, with an optional :arch.
_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+(?::[a-z0-9-]+)?$")


def package_names(value: Any) -> list[str]:
    """The task's `name` (list or comma-separated string) as a list of names."""
    if isinstance(value, str):
        value = value.split(",")
    return [str(v).strip() for v in value or [] if str(v).strip()]


def missing(names: list[str], dpkg_output: str) -> list[str]:
    """Names dpkg does not report as installed ("ii"): `dpkg-query -W -f '${binary:Package} ${db:Status-Abbrev}\\n'`."""
    installed: set[str] = set()
    for line in dpkg_output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] == "ii":
            installed.add(parts[0])
            installed.add(parts[0].split(":", 1)[0])
    return [n for n in names if n not in installed]


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = True

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        if "pkg" in args:
            args["name"] = args.pop("pkg")
        names = package_names(args.get("name"))
        if not names:
            raise AnsibleActionFail("packages_present needs `name`: the packages to install")
        state = args.get("state", "present")
        if state != "present":
            raise AnsibleActionFail(f"packages_present installs packages (state: present), not state: {state}")
        if all(_NAME.match(n) for n in names):
            query = "dpkg-query -W -f '${binary:Package} ${db:Status-Abbrev}\\n' -- " + " ".join(
                shlex.quote(n) for n in names
            )
            probe = self._low_level_execute_command(query, sudoable=False)  # dpkg-query needs no root
            # rc 1 means "some package unknown to dpkg": the output still lists the others.
            if probe.get("rc") in (0, 1) and not missing(names, probe.get("stdout", "")):
                result.update(changed=False, msg=f"all {len(names)} package(s) installed", packages=names)
                return result
        result.update(self._execute_module("ansible.builtin.apt", module_args=args, task_vars=task_vars))
        return result
