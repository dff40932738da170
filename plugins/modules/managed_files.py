#!/usr/bin/python
"""Bring the directories and files of one concern to their state in one module run."""

from __future__ import annotations

DOCUMENTATION = r"""
module: managed_files
short_description: Directories, files with their content, single lines and removed paths of one concern, in one run
description:
  - Brings a set of directories and files to their state in one module run, where
    M(ansible.builtin.template) costs two module runs per file (C(stat), then C(file) for the
    attributes) and M(ansible.builtin.file) one per directory. Each module run costs the host
    a Python start and the compilation of Ansible's module_utils, so one run for the files of a
    concern is most of what a no-op re-run saves.
  - Processes O(directories) first, then O(files), then O(lines), then O(absent), each in the
    order given.
  - Content comes from the task, usually the C(ansible.builtin.template) lookup (see the
    examples), which finds the role's C(templates/) and fills C(ansible_managed) as the
    template module does.
  - A file is written only when its bytes differ from O(files[].content); the new content goes
    to a temporary file in the destination directory (hidden, no extension, so no C(*.conf)
    glob reads it) with the final owner, group and mode, is checked by
    O(files[].validate) if given, and replaces the old file by a rename. The attributes of
    files and directories whose content is right are fixed where they differ.
  - Every argument is checked (absolute paths, no path twice, known users and groups, octal
    modes, C(%s) in validate) before anything is changed. In check mode a user or group this
    host does not have yet (its package not installed) is no error; the paths it owns count
    as changed.
options:
  directories:
    description:
      - Directories that must exist. Missing parents are created with the same owner, group
        and mode (as M(ansible.builtin.file) does). A path that exists and is not a directory
        (a symlink included) fails the task.
    type: list
    elements: dict
    default: []
    suboptions:
      path: {description: Absolute path., type: path, required: true}
      owner: {description: User name or uid; default O(owner)., type: str}
      group: {description: Group name or gid; default O(group)., type: str}
      mode: {description: Octal mode (C("0755")); default O(directory_mode)., type: raw}
  files:
    description:
      - Regular files and their content. The parent directory must exist (list it in
        O(directories)), except in check mode, where a missing one means the file would be
        created. A path that exists and is not a regular file (a symlink included) fails the
        task.
    type: list
    elements: dict
    default: []
    suboptions:
      path: {description: Absolute path., type: path, required: true}
      content:
        description: The whole content of the file (UTF-8); this or O(files[].src).
        type: str
      src:
        description:
          - A regular file on the host whose bytes are the content (a copy kept in another
            owner's or mode's place, such as a certificate another role wrote); this or
            O(files[].content). In check mode a missing source counts as a change (the role
            that writes it may not have run yet); otherwise it fails the task.
        type: path
      owner: {description: User name or uid; default O(owner)., type: str}
      group: {description: Group name or gid; default O(group)., type: str}
      mode: {description: Octal mode (C("0644")); default O(mode)., type: raw}
      validate:
        description:
          - Command that checks the new content before it replaces the old file, as in
            M(ansible.builtin.template); C(%s) is a copy of the new content under the file's
            own name in a private temporary directory, with the final owner, group and mode
            (programs that read the name, such as C(systemd-analyze verify) for a unit, see
            the real one). When it fails, the task fails naming the file and showing the
            command's output, and the old file stays.
          - Not run in check mode (the program may not be installed yet on a fresh host).
        type: str
  lines:
    description:
      - Single lines of files the task does not own (a distribution's C(/etc/login.defs)), as
        M(ansible.builtin.lineinfile) with O(lines[].regexp) and C(state=present) sets them;
        the last line matching the regular expression becomes O(lines[].line); where none
        matches and the line is not in the file, it is added at the end. The edits of one file
        are made in the order given and written once, keeping its owner, group and mode.
      - The file must exist (in check mode a missing one counts as changed); a path here may
        repeat, but not be listed under O(directories), O(files) or O(absent).
    type: list
    elements: dict
    default: []
    suboptions:
      path: {description: Absolute path of an existing regular file., type: path, required: true}
      regexp:
        description: Python regular expression searched in each line (with its newline).
        type: str
        required: true
      line: {description: The whole line (no newline)., type: str, required: true}
  absent:
    description:
      - Paths that must not exist. Files and symlinks are removed, and empty directories; a
        directory that is not empty fails the task (nothing is removed recursively).
    type: list
    elements: path
    default: []
  owner:
    description:
      - Owner of the directories and files that do not set their own; unset leaves it as it
        is (new ones get the connecting user's).
    type: str
  group:
    description: Group of the directories and files that do not set their own.
    type: str
  mode:
    description:
      - Mode of the files that do not set their own; unset leaves an existing file's mode and
        gives a new one 0666 less the umask.
    type: raw
  directory_mode:
    description: Mode of the directories that do not set their own; unset leaves an existing directory's mode.
    type: raw
attributes:
  check_mode:
    support: full
    details: Reports what would change and changes nothing; validate is not run.
  diff_mode:
    support: full
    details:
      - A list with one entry per changed path. Content changes have C(before)/C(after) text
        under the path as header; attribute changes, created directories and removed paths
        have C(before)/C(after) mappings.
      - Nothing is returned when the task does not ask for a diff (the task keyword C(diff)
        set to C(false), for files holding secrets).
notes:
  - SELinux contexts are kept by the rename (ansible's own C(atomic_move)); extended
    attributes, C(follow) and backups are not supported.
author: llm-cluster toolkit
"""

EXAMPLES = r"""
- name: AIDE (directories, configuration checked by aide, the check script)
  managed_files:
    owner: root
    group: root
    directory_mode: "0755"
    directories:
      - path: /etc/aide
      - {path: /var/lib/aide, mode: "0700"}
    files:
      - path: /etc/aide/aide.conf
        content: "{{ lookup('ansible.builtin.template', 'etc/aide/aide.conf.j2') }}"
        mode: "0600"
        validate: aide --config-check --config %s
      - path: /usr/local/sbin/cluster-integrity-check
        content: "{{ lookup('ansible.builtin.template', 'usr/local/sbin/cluster-integrity-check.j2') }}"
        mode: "0755"
    absent:
      - /etc/aide/aide.conf.d/old.conf

- name: Two settings of the distribution's login.defs, the rest of it as it is
  managed_files:
    lines:
      - {path: /etc/login.defs, regexp: '^#?\s*UMASK\s', line: "UMASK\t027"}
      - {path: /etc/login.defs, regexp: '^#?\s*PASS_MAX_DAYS\s', line: "PASS_MAX_DAYS\t365"}

- name: Units of the clean-up, systemd reloaded when one changed
  managed_files:
    owner: root
    group: root
    mode: "0644"
    files:
      - path: /etc/systemd/system/cleanup.service
        content: "{{ lookup('ansible.builtin.template', 'etc/systemd/system/cleanup.service.j2') }}"
      - path: /etc/systemd/system/cleanup.timer
        content: "{{ lookup('ansible.builtin.template', 'etc/systemd/system/cleanup.timer.j2') }}"
  register: cleanup_units
  notify: Reload systemd

- name: Restart only when the service file itself changed
  ansible.builtin.debug:
    msg: restart needed
  when: "'/etc/systemd/system/cleanup.service' in cleanup_units.changed_paths"
"""

RETURN = r"""
changed_paths:
  description:
    - The paths that changed (or would, in check mode); directories first, then files, then
      files edited by lines, then removed paths, each in the order given.
  returned: always
  type: list
  elements: str
  sample: [/etc/aide, /etc/aide/aide.conf]
"""

import grp
import os
import pwd
import re
import shlex
import shutil
import stat
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule

# Larger contents are not diffed (ansible's default max_file_size_for_diff).
DIFF_MAX_BYTES = 104448

ITEM_COMMON = {
    "path": {"type": "path", "required": True},
    "owner": {"type": "str"},
    "group": {"type": "str"},
    "mode": {"type": "raw"},
}


class Refused(Exception):
    """An argument or a path on the host that the module will not act on."""


def parse_mode(value: Any, where: str) -> int | None:
    """An octal string ("0644", "644") or an int (YAML's 0644) -> the permission bits."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise Refused(f"{where}: mode {value!r} is not an octal mode")
    if isinstance(value, int):
        mode = value
    else:
        try:
            mode = int(str(value), 8)
        except ValueError:
            raise Refused(f"{where}: mode {value!r} is not an octal mode such as '0644'") from None
    if mode != stat.S_IMODE(mode):
        raise Refused(f"{where}: mode {value!r} has bits beyond the permissions")
    return mode


def resolve(name: str | None, kind: str, where: str, check: bool) -> int | str | None:
    """A user or group name (or number) -> its id. In check mode an unknown name stays a name
    (the package that creates it may not be installed yet): the path then counts as changed."""
    if name is None or name == "":
        return None
    if name.isdigit():
        return int(name)
    try:
        return pwd.getpwnam(name).pw_uid if kind == "user" else grp.getgrnam(name).gr_gid
    except KeyError:
        if check:
            return name
        raise Refused(f"{where}: no {kind} {name!r} on this host") from None


def plan(params: dict[str, Any], check: bool = False) -> tuple[list[dict], list[dict], dict, list[str]]:
    """Check every argument before anything is changed; fill in the defaults."""
    seen: set[str] = set()

    def claim(path: str, kind: str) -> str:
        if not os.path.isabs(path):
            raise Refused(f"{kind} {path!r}: the path must be absolute")
        path = os.path.normpath(path)
        if path in seen:
            raise Refused(f"{path}: listed more than once")
        seen.add(path)
        return path

    def attributes(item: dict, kind: str, default_mode: Any) -> dict:
        path = claim(item["path"], kind)
        owner = item.get("owner") if item.get("owner") not in (None, "") else params["owner"]
        group = item.get("group") if item.get("group") not in (None, "") else params["group"]
        mode = item.get("mode") if item.get("mode") not in (None, "") else default_mode
        return {
            "path": path,
            "uid": resolve(owner, "user", path, check),
            "gid": resolve(group, "group", path, check),
            "mode": parse_mode(mode, path),
        }

    directories = [attributes(item, "directory", params["directory_mode"]) for item in params["directories"]]
    files = []
    for item in params["files"]:
        entry = attributes(item, "file", params["mode"])
        entry["content"] = source(item, entry["path"], check)
        entry["validate"] = item.get("validate")
        if entry["validate"] and "%s" not in entry["validate"]:
            raise Refused(f"{entry['path']}: validate must contain %s (the new file): {entry['validate']!r}")
        files.append(entry)
    # lines: path -> [(compiled regexp, line)], in the order given
    edits: dict[str, list[tuple[re.Pattern, str]]] = {}
    for item in params["lines"]:
        path = os.path.normpath(item["path"])
        if path not in edits:
            edits[path] = []
            claim(path, "lines path")
        try:
            pattern = re.compile(item["regexp"])
        except re.error as exc:
            raise Refused(f"{path}: regexp {item['regexp']!r} is not a regular expression: {exc}") from None
        if "\n" in item["line"]:
            raise Refused(f"{path}: line {item['line']!r} holds a newline; give one line")
        edits[path].append((pattern, item["line"]))
    absent = [claim(path, "absent path") for path in params["absent"]]
    return directories, files, edits, absent


def source(item: dict, path: str, check: bool) -> bytes | None:
    """A file's content: the task's text, or the bytes of a file on the host (None: a source
    that is missing in check mode, so the file counts as changed)."""
    if (item.get("content") is None) == (item.get("src") is None):
        raise Refused(f"{path}: give either content or src")
    if item.get("content") is not None:
        return item["content"].encode("utf-8", errors="surrogateescape")
    src = item["src"]
    if not os.path.isabs(src):
        raise Refused(f"{path}: src {src!r} must be an absolute path")
    if not os.path.lexists(src):
        if check:
            return None
        raise Refused(f"{path}: its source {src} does not exist")
    if not stat.S_ISREG(os.stat(src).st_mode):
        raise Refused(f"{path}: its source {src} is not a regular file")
    with open(src, "rb") as handle:
        return handle.read()


def edit_lines(text: str, edits: list[tuple[re.Pattern, str]]) -> str:
    """lineinfile's state=present with regexp: the last matching line is replaced; with no
    match, a line equal to the new one is kept; otherwise the line is added at the end."""
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    for pattern, line in edits:
        index = -1
        for number, current in enumerate(lines):
            if pattern.search(current):
                index = number
        if index == -1:
            for number, current in enumerate(lines):
                if current.rstrip("\r\n") == line:
                    index = number
        if index != -1:
            lines[index] = line + "\n"
        else:
            if lines and not lines[-1].endswith(("\n", "\r")):
                lines[-1] += "\n"
            lines.append(line + "\n")
    return "".join(lines)


def text_for_diff(data: bytes, side: str) -> tuple[str | None, dict]:
    """Text of one side of a content diff, or the marker the callbacks print instead."""
    if len(data) > DIFF_MAX_BYTES:
        return None, {f"{side}_larger": DIFF_MAX_BYTES}
    if b"\x00" in data:
        return None, {f"{side}_binary": 1}
    try:
        return data.decode("utf-8"), {}
    except UnicodeDecodeError:
        return None, {f"{side}_binary": 1}


def read_regular(path: str) -> bytes:
    """The bytes of an existing path that must be a regular file (a symlink is refused)."""
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise Refused(f"{path}: exists and is not a regular file (a symlink counts as not); remove it by hand")
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise Refused(f"{path}: cannot read it: {exc.strerror}") from None


class Run:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.check = module.check_mode
        self.want_diff = module._diff  # set by the task's diff keyword (ansible's module convention)
        self.changed_paths: list[str] = []
        self.diffs: list[dict] = []

    def mark(self, path: str) -> None:
        if path not in self.changed_paths:
            self.changed_paths.append(path)

    def fix_attributes(self, entry: dict, path: str | None = None, record: bool = True) -> bool:
        """Owner, group and mode of an existing path; a diff entry of what differed."""
        path = path or entry["path"]
        attrs: dict[str, dict] = {}
        # A name unknown here (check mode only): the owner or group would change.
        unknown = isinstance(entry["uid"], str) or isinstance(entry["gid"], str)
        uid = None if isinstance(entry["uid"], str) else entry["uid"]
        gid = None if isinstance(entry["gid"], str) else entry["gid"]
        changed = self.module.set_owner_if_different(path, uid, unknown, attrs)
        changed = self.module.set_group_if_different(path, gid, changed, attrs)
        changed = self.module.set_mode_if_different(path, entry["mode"], changed, attrs)
        if changed and attrs and record and self.want_diff:
            self.diffs.append(
                {
                    "before_header": path,
                    "after_header": path,
                    "before": {"path": path, **attrs.get("before", {})},
                    "after": {"path": path, **attrs.get("after", {})},
                }
            )
        return changed

    def directory(self, entry: dict) -> None:
        path = entry["path"]
        missing = []
        probe = path
        while not os.path.lexists(probe):
            missing.append(probe)
            parent = os.path.dirname(probe)
            if parent == probe:
                break
            probe = parent
        for created in reversed(missing):
            if not self.check:
                try:
                    # never more open than asked, also before the attributes are set
                    os.mkdir(created, 0o777 if entry["mode"] is None else entry["mode"])
                except OSError as exc:
                    raise Refused(f"{created}: cannot create the directory: {exc.strerror}") from None
                self.fix_attributes(entry, created, record=False)
            self.mark(path)
            if self.want_diff:
                self.diffs.append(
                    {
                        "before_header": created,
                        "after_header": created,
                        "before": {"path": created, "state": "absent"},
                        "after": {"path": created, "state": "directory"},
                    }
                )
        if missing:
            return
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise Refused(f"{path}: exists and is not a directory (a symlink counts as not); remove or move it by hand")
        if self.fix_attributes(entry):
            self.mark(path)

    def file(self, entry: dict) -> None:
        path = entry["path"]
        parent = os.path.dirname(path)
        exists = os.path.lexists(path)
        before = read_regular(path) if exists else b""
        if not os.path.isdir(parent) and not self.check:
            raise Refused(f"{path}: the directory {parent} does not exist (list it under directories)")

        content_changed = not exists or before != entry["content"]
        if content_changed:
            self.mark(path)
            if entry["content"] is None:  # check mode, its source not there yet
                return
            if self.want_diff:
                self.diffs.append(self.content_diff(path, before if exists else b"", entry["content"]))
            if not self.check:
                self.write(entry)
        # a new file's attributes are no change of their own (nor a diff entry)
        if (exists or not self.check) and self.fix_attributes(entry, record=exists):
            self.mark(path)

    def content_diff(self, path: str, before: bytes, after: bytes) -> dict:
        diff: dict[str, Any] = {"before_header": path, "after_header": path}
        before_text, before_marker = text_for_diff(before, "dst")
        after_text, after_marker = text_for_diff(after, "src")
        diff.update(before_marker)
        diff.update(after_marker)
        if before_text is not None and after_text is not None:
            diff["before"] = before_text
            diff["after"] = after_text
        return diff

    def write(self, entry: dict) -> None:
        path = entry["path"]
        directory, name = os.path.split(path)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
        except OSError as exc:
            raise Refused(f"{path}: cannot create a temporary file in {directory}: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(entry["content"])
                handle.flush()
                os.fsync(handle.fileno())
            # The final attributes before the rename: the new content is never readable by more
            # than it should be.
            current = os.stat(path) if os.path.exists(path) else None
            uid = entry["uid"] if entry["uid"] is not None else (current.st_uid if current else -1)
            gid = entry["gid"] if entry["gid"] is not None else (current.st_gid if current else -1)
            os.chown(tmp, uid, gid)
            if entry["mode"] is not None:
                mode = entry["mode"]
            elif current:
                mode = stat.S_IMODE(current.st_mode)
            else:
                umask = os.umask(0)
                os.umask(umask)
                mode = 0o666 & ~umask
            os.chmod(tmp, mode)
            if entry["validate"]:
                rc, out, err = self.validate(entry["validate"], tmp, name, uid, gid, mode)
                if rc != 0:
                    self.module.fail_json(
                        msg=f"{path}: the new content failed validation ({entry['validate']}, rc {rc}); "
                        f"the old file was kept: {(err or out).strip()}",
                        path=path,
                        rc=rc,
                        stdout=out,
                        stderr=err,
                        changed=bool(self.changed_paths[:-1]),
                        changed_paths=self.changed_paths[:-1],
                    )
            # atomic_move gives a new file the umask's mode and the connecting user: under
            # umask 077 it is never readable by others before its attributes are set.
            # (then the mode is set again; owner and group follow in fix_attributes).
            umask = os.umask(0o077)
            try:
                self.module.atomic_move(tmp, path, keep_dest_attrs=False)
            finally:
                os.umask(umask)
            if current is None:
                os.chmod(path, mode)
        except OSError as exc:
            raise Refused(f"{path}: cannot write it: {exc}") from None
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)

    def validate(self, command: str, tmp: str, name: str, uid: int, gid: int, mode: int) -> tuple[int, str, str]:
        """Run the check on a copy named as the file itself (a unit's checker reads the unit's
        name from it), in a directory of its own that is removed afterwards."""
        check_dir = tempfile.mkdtemp(prefix="managed-files-")
        try:
            copy = os.path.join(check_dir, name)
            shutil.copyfile(tmp, copy)
            os.chown(copy, uid, gid)
            os.chmod(copy, mode)
            return self.module.run_command(command.replace("%s", shlex.quote(copy)))
        finally:
            shutil.rmtree(check_dir, ignore_errors=True)

    def lines(self, path: str, edits: list[tuple[re.Pattern, str]]) -> None:
        if not os.path.lexists(path):
            if self.check:
                self.mark(path)
                return
            raise Refused(f"{path}: does not exist; lines edits existing files only")
        before = read_regular(path)
        after = edit_lines(before.decode("utf-8", errors="surrogateescape"), edits).encode(
            "utf-8", errors="surrogateescape"
        )
        if after == before:
            return
        self.mark(path)
        if self.want_diff:
            self.diffs.append(self.content_diff(path, before, after))
        if not self.check:
            # owner, group and mode None: write() keeps those of the file
            self.write({"path": path, "content": after, "uid": None, "gid": None, "mode": None, "validate": None})

    def absent(self, path: str) -> None:
        if not os.path.lexists(path):
            return
        mode = os.lstat(path).st_mode
        is_dir = stat.S_ISDIR(mode)
        if is_dir and os.listdir(path):
            raise Refused(f"{path}: is a directory that is not empty; managed_files removes only empty ones")
        if not self.check:
            try:
                os.rmdir(path) if is_dir else os.unlink(path)
            except OSError as exc:
                raise Refused(f"{path}: cannot remove it: {exc.strerror}") from None
        self.mark(path)
        if self.want_diff:
            self.diffs.append(
                {
                    "before_header": path,
                    "after_header": path,
                    "before": {"path": path, "state": "directory" if is_dir else "file"},
                    "after": {"path": path, "state": "absent"},
                }
            )


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "directories": {"type": "list", "elements": "dict", "default": [], "options": dict(ITEM_COMMON)},
            "files": {
                "type": "list",
                "elements": "dict",
                "default": [],
                "options": {
                    **ITEM_COMMON,
                    "content": {"type": "str"},
                    "src": {"type": "path"},
                    "validate": {"type": "str"},
                },
            },
            "lines": {
                "type": "list",
                "elements": "dict",
                "default": [],
                "options": {
                    "path": {"type": "path", "required": True},
                    "regexp": {"type": "str", "required": True},
                    "line": {"type": "str", "required": True},
                },
            },
            "absent": {"type": "list", "elements": "path", "default": []},
            "owner": {"type": "str"},
            "group": {"type": "str"},
            "mode": {"type": "raw"},
            "directory_mode": {"type": "raw"},
        },
        supports_check_mode=True,
    )
    run = Run(module)
    try:
        directories, files, edits, absent = plan(module.params, module.check_mode)
        for entry in directories:
            run.directory(entry)
        for entry in files:
            run.file(entry)
        for path, path_edits in edits.items():
            run.lines(path, path_edits)
        for path in absent:
            run.absent(path)
    except Refused as exc:
        module.fail_json(msg=str(exc), changed=bool(run.changed_paths), changed_paths=run.changed_paths)
    result: dict[str, Any] = {"changed": bool(run.changed_paths), "changed_paths": run.changed_paths}
    if run.want_diff:
        result["diff"] = run.diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
