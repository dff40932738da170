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
and reports as apt does. A version pin (`name=1.2.*`, apt's own syntax, `*` as a wildcard)
counts as installed when dpkg's version of the package matches it, as apt itself decides.

Why: the apt module opens the whole package cache and takes about a second of the host's
CPU even when nothing is missing; a site has a dozen such tasks per host, the largest part
of a no-op drift re-run (docs/benchmarks/noop-rerun.md). dpkg-query answers in
milliseconds. Other states, other version relations (`>=`) and anything dpkg does not
answer for plainly (virtual packages, half-installed ones, a version that does not match)
go to apt, so the result is always what apt alone would do.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

# Package names as dpkg accepts them, with an optional :arch, and an optional =version pin
# (apt's syntax: an exact version, or a pattern with `*`).
_NAME = re.compile(r"^(?P<name>[a-z0-9][a-z0-9+.-]+(?::[a-z0-9-]+)?)(?:=(?P<version>[A-Za-z0-9.+:~*-]+))?$")


def package_names(value: Any) -> list[str]:
    """The task's `name` (list or comma-separated string) as a list of names."""
    if isinstance(value, str):
        value = value.split(",")
    return [str(v).strip() for v in value or [] if str(v).strip()]


def missing(names: list[str], dpkg_output: str) -> list[str]:
    """Names (with their pins) dpkg does not report as installed ("ii") at a matching version:
    `dpkg-query -W -f '${binary:Package} ${db:Status-Abbrev} ${Version}\\n'`."""
    installed: dict[str, str] = {}
    for line in dpkg_output.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "ii":
            installed[parts[0]] = parts[2]
            installed[parts[0].split(":", 1)[0]] = parts[2]
    out = []
    for n in names:
        match = _NAME.match(n)
        name, pin = (match["name"], match["version"]) if match else (n, None)
        if name not in installed or (pin is not None and not fnmatch.fnmatchcase(installed[name], pin)):
            out.append(n)
    return out


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
            query = "dpkg-query -W -f '${binary:Package} ${db:Status-Abbrev} ${Version}\\n' -- " + " ".join(
                shlex.quote(_NAME.match(n)["name"]) for n in names
            )
            probe = self._low_level_execute_command(query, sudoable=False)  # dpkg-query needs no root
            # rc 1 means "some package unknown to dpkg": the output still lists the others.
            if probe.get("rc") in (0, 1) and not missing(names, probe.get("stdout", "")):
                result.update(changed=False, msg=f"all {len(names)} package(s) installed", packages=names)
                return result
        result.update(self._execute_module("ansible.builtin.apt", module_args=args, task_vars=task_vars))
        return result
