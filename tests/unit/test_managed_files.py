"""managed_files: directories, files and removed paths of one concern in one module run, on a
real temporary directory, owned by the user running the tests."""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args

from tests.unit.conftest import load_plugin

mf = load_plugin("plugins/modules/managed_files.py")

USER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name


def run(capsys, check: bool = False, diff: bool = False, **args) -> dict:
    args = {"owner": USER, "group": GROUP, **args, "_ansible_check_mode": check, "_ansible_diff": diff}
    with patch_module_args(args), pytest.raises(SystemExit):
        mf.main()
    return json.loads(capsys.readouterr().out)


def mode_of(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def layout(tmp_path) -> dict:
    return {
        "directory_mode": "0750",
        "mode": "0644",
        "directories": [{"path": str(tmp_path / "etc")}, {"path": str(tmp_path / "var/lib/x"), "mode": "0700"}],
        "files": [
            {"path": str(tmp_path / "etc/a.conf"), "content": "a = 1\n"},
            {"path": str(tmp_path / "etc/secret"), "content": "s3cret\n", "mode": "0600"},
        ],
    }


def test_creates_then_a_second_run_changes_nothing(tmp_path, capsys):
    first = run(capsys, **layout(tmp_path))
    assert first["changed"] is True
    assert first["changed_paths"] == [
        str(tmp_path / "etc"),
        str(tmp_path / "var/lib/x"),
        str(tmp_path / "etc/a.conf"),
        str(tmp_path / "etc/secret"),
    ]
    assert (tmp_path / "etc/a.conf").read_text() == "a = 1\n"
    assert mode_of(tmp_path / "etc") == 0o750
    assert mode_of(tmp_path / "var/lib/x") == 0o700
    # missing parents get the directory's attributes, as ansible.builtin.file gives them
    assert mode_of(tmp_path / "var/lib") == 0o700
    assert mode_of(tmp_path / "etc/a.conf") == 0o644
    assert mode_of(tmp_path / "etc/secret") == 0o600
    second = run(capsys, **layout(tmp_path))
    assert (second["changed"], second["changed_paths"]) == (False, [])
    assert sorted(p.name for p in (tmp_path / "etc").iterdir()) == ["a.conf", "secret"]  # no temporary file


def test_a_new_file_without_a_mode_gets_the_umask_and_no_attribute_diff(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        result = run(capsys, diff=True, files=[{"path": str(tmp_path / "plain"), "content": "x\n"}])
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "plain") == 0o644
    assert result["diff"] == [
        {
            "before_header": str(tmp_path / "plain"),
            "after_header": str(tmp_path / "plain"),
            "before": "",
            "after": "x\n",
        }
    ]


def test_attribute_drift_is_fixed(tmp_path, capsys):
    run(capsys, **layout(tmp_path))
    os.chmod(tmp_path / "etc/secret", 0o644)
    os.chmod(tmp_path / "var/lib/x", 0o755)
    result = run(capsys, diff=True, **layout(tmp_path))
    assert result["changed_paths"] == [str(tmp_path / "var/lib/x"), str(tmp_path / "etc/secret")]
    assert mode_of(tmp_path / "etc/secret") == 0o600
    assert mode_of(tmp_path / "var/lib/x") == 0o700
    assert (tmp_path / "etc/secret").read_text() == "s3cret\n"
    modes = [(d["before"]["mode"], d["after"]["mode"]) for d in result["diff"]]
    assert modes == [("0755", "0700"), ("0644", "0600")]


def test_content_drift_is_fixed_keeping_the_mode(tmp_path, capsys):
    run(capsys, **layout(tmp_path))
    (tmp_path / "etc/a.conf").write_text("a = 2\n")
    result = run(capsys, **layout(tmp_path))
    assert result["changed_paths"] == [str(tmp_path / "etc/a.conf")]
    assert (tmp_path / "etc/a.conf").read_text() == "a = 1\n"
    assert mode_of(tmp_path / "etc/a.conf") == 0o644


def test_content_is_compared_byte_for_byte(tmp_path, capsys):
    run(capsys, **layout(tmp_path))
    (tmp_path / "etc/a.conf").write_text("a = 1")  # the newline is missing
    assert run(capsys, **layout(tmp_path))["changed_paths"] == [str(tmp_path / "etc/a.conf")]
    assert (tmp_path / "etc/a.conf").read_bytes() == b"a = 1\n"


def test_check_mode_reports_and_changes_nothing(tmp_path, capsys):
    fresh = run(capsys, check=True, **layout(tmp_path))
    assert fresh["changed"] is True
    assert len(fresh["changed_paths"]) == 4
    assert list(tmp_path.iterdir()) == []
    run(capsys, **layout(tmp_path))
    (tmp_path / "etc/a.conf").write_text("drift\n")
    os.chmod(tmp_path / "etc/secret", 0o640)
    (tmp_path / "etc/old").write_text("x")
    args = {**layout(tmp_path), "absent": [str(tmp_path / "etc/old")]}
    result = run(capsys, check=True, **args)
    assert result["changed_paths"] == [
        str(tmp_path / "etc/a.conf"),
        str(tmp_path / "etc/secret"),
        str(tmp_path / "etc/old"),
    ]
    assert (tmp_path / "etc/a.conf").read_text() == "drift\n"
    assert mode_of(tmp_path / "etc/secret") == 0o640
    assert (tmp_path / "etc/old").exists()


def test_diff_lists_each_changed_file_with_headers(tmp_path, capsys):
    run(capsys, **layout(tmp_path))
    (tmp_path / "etc/a.conf").write_text("a = 2\n")
    args = layout(tmp_path)
    args["files"].append({"path": str(tmp_path / "etc/new"), "content": "new\n"})
    result = run(capsys, diff=True, **args)
    assert result["diff"] == [
        {
            "before_header": str(tmp_path / "etc/a.conf"),
            "after_header": str(tmp_path / "etc/a.conf"),
            "before": "a = 2\n",
            "after": "a = 1\n",
        },
        {
            "before_header": str(tmp_path / "etc/new"),
            "after_header": str(tmp_path / "etc/new"),
            "before": "",
            "after": "new\n",
        },
    ]


def test_no_diff_content_unless_asked(tmp_path, capsys):
    args = layout(tmp_path)
    run(capsys, **args)
    (tmp_path / "etc/secret").write_text("old secret\n")
    result = run(capsys, diff=False, **args)
    assert result["changed_paths"] == [str(tmp_path / "etc/secret")]
    assert "diff" not in result
    assert "old secret" not in json.dumps(result)


def test_failed_validation_keeps_the_old_file(tmp_path, capsys):
    run(capsys, **layout(tmp_path))
    args = layout(tmp_path)
    args["files"][0] = {
        **args["files"][0],
        "content": "broken\n",
        "validate": "sh -c 'echo bad line in $1 >&2; exit 3' sh %s",
    }
    result = run(capsys, **args)
    assert result["failed"] is True
    assert result["msg"].startswith(f"{tmp_path / 'etc/a.conf'}: the new content failed validation")
    assert "bad line in" in result["msg"] and result["rc"] == 3
    assert (tmp_path / "etc/a.conf").read_text() == "a = 1\n"
    assert sorted(p.name for p in (tmp_path / "etc").iterdir()) == ["a.conf", "secret"]


def test_validation_sees_the_new_content_under_the_file_s_own_name(tmp_path, capsys):
    """systemd-analyze verify reads the unit's name from the file name: the checked copy has
    the destination's name (in a private directory, removed afterwards)."""
    seen = tmp_path / "seen"
    args = layout(tmp_path)
    args["files"][0]["validate"] = f"sh -c 'cat $1 > {seen}; basename $1 >> {seen}; dirname $1 >> {seen}' sh %s"
    result = run(capsys, **args)
    assert result["changed"] is True and not result.get("failed")
    content, name, directory = seen.read_text().splitlines()
    assert (content, name) == ("a = 1", "a.conf")
    assert not Path(directory).exists()


def test_absent_removes_files_links_and_empty_directories_only(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    paths = [str(tmp_path / name) for name in ("link", "file", "empty", "never-there")]
    result = run(capsys, diff=True, absent=paths)
    assert result["changed_paths"] == paths[:3]
    assert list(tmp_path.iterdir()) == []
    assert [d["before"]["state"] for d in result["diff"]] == ["file", "file", "directory"]
    assert run(capsys, absent=paths)["changed"] is False
    (tmp_path / "full").mkdir()
    (tmp_path / "full/keep").write_text("x")
    refused = run(capsys, absent=[str(tmp_path / "full")])
    assert refused["failed"] is True and "not empty" in refused["msg"]
    assert (tmp_path / "full/keep").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"files": [{"path": "relative", "content": ""}]}, "must be absolute"),
        ({"directories": [{"path": "/tmp/x"}], "absent": ["/tmp/x"]}, "listed more than once"),
        ({"files": [{"path": "/tmp/x", "content": "", "mode": "rw-r--r--"}]}, "not an octal mode"),
        ({"files": [{"path": "/tmp/x", "content": "", "validate": "true"}]}, "validate must contain %s"),
        ({"files": [{"path": "/tmp/x", "content": ""}], "owner": "no-such-user-here"}, "no user 'no-such-user-here'"),
    ],
)
def test_bad_arguments_fail_before_any_change(tmp_path, capsys, args, message):
    args = {**args, "directories": [{"path": str(tmp_path / "made")}, *args.get("directories", [])]}
    result = run(capsys, **args)
    assert result["failed"] is True and message in result["msg"]
    assert not (tmp_path / "made").exists()


def test_check_mode_takes_a_user_not_created_yet_as_a_change(tmp_path, capsys):
    run(capsys, **layout(tmp_path))
    args = {**layout(tmp_path), "owner": "no-such-user-yet"}
    result = run(capsys, check=True, **args)
    assert result["changed_paths"] == [str(tmp_path / p) for p in ("etc", "var/lib/x", "etc/a.conf", "etc/secret")]
    assert run(capsys, **args)["failed"] is True


def test_a_missing_parent_fails_naming_the_file_but_not_in_check_mode(tmp_path, capsys):
    args = {"files": [{"path": str(tmp_path / "nowhere/f"), "content": "x"}]}
    assert run(capsys, check=True, **args)["changed_paths"] == [str(tmp_path / "nowhere/f")]
    result = run(capsys, **args)
    assert result["failed"] is True
    parent = tmp_path / "nowhere"
    assert result["msg"] == f"{parent}/f: the directory {parent} does not exist (list it under directories)"


def test_a_symlink_in_place_of_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "target").write_text("keep\n")
    (tmp_path / "f").symlink_to(tmp_path / "target")
    result = run(capsys, files=[{"path": str(tmp_path / "f"), "content": "new\n"}])
    assert result["failed"] is True and "not a regular file" in result["msg"]
    assert (tmp_path / "target").read_text() == "keep\n"


LOGIN_DEFS = "# umask\nUMASK\t\t022\n#PASS_MAX_DAYS\t99999\nPASS_MAX_DAYS\t99999\nENCRYPT_METHOD SHA512"


def login_defs_edits(path) -> list[dict]:
    return [
        {"path": str(path), "regexp": rf"^#?\s*{key}\s", "line": f"{key}\t{value}"}
        for key, value in (("UMASK", "027"), ("PASS_MAX_DAYS", "365"), ("ENCRYPT_METHOD", "YESCRYPT"), ("NEW_KEY", "1"))
    ]


def test_lines_edit_a_file_as_lineinfile_does_and_keep_its_attributes(tmp_path, capsys):
    path = tmp_path / "login.defs"
    path.write_text(LOGIN_DEFS)
    os.chmod(path, 0o640)
    result = run(capsys, diff=True, mode="0600", lines=login_defs_edits(path))
    assert result["changed_paths"] == [str(path)]
    # the last matching line replaced, the others kept; a key with no line added at the end,
    # after the newline the last line lacked
    assert (
        path.read_text()
        == "# umask\nUMASK\t027\n#PASS_MAX_DAYS\t99999\nPASS_MAX_DAYS\t365\nENCRYPT_METHOD\tYESCRYPT\nNEW_KEY\t1\n"
    )
    assert mode_of(path) == 0o640  # not the files' default mode: the file is not ours
    assert result["diff"][0]["before"] == LOGIN_DEFS
    assert run(capsys, lines=login_defs_edits(path))["changed"] is False


def test_lines_keep_an_equal_line_that_the_regexp_misses(tmp_path, capsys):
    path = tmp_path / "conf"
    path.write_text('a\nMAILTO=""\nb\n')
    result = run(capsys, lines=[{"path": str(path), "regexp": "^NOMATCH", "line": 'MAILTO=""'}])
    assert result["changed"] is False
    assert path.read_text() == 'a\nMAILTO=""\nb\n'


def test_lines_in_check_mode_and_on_a_missing_file(tmp_path, capsys):
    path = tmp_path / "login.defs"
    path.write_text(LOGIN_DEFS)
    assert run(capsys, check=True, lines=login_defs_edits(path))["changed_paths"] == [str(path)]
    assert path.read_text() == LOGIN_DEFS
    missing = [{"path": str(tmp_path / "nope"), "regexp": "^A=", "line": "A=1"}]
    assert run(capsys, check=True, lines=missing)["changed"] is True
    result = run(capsys, lines=missing)
    assert result["failed"] is True and "does not exist" in result["msg"]
    assert not (tmp_path / "nope").exists()


def test_src_copies_a_file_of_the_host_with_its_own_attributes(tmp_path, capsys):
    source = tmp_path / "pki/server.key"
    source.parent.mkdir()
    source.write_bytes(b"\x00key bytes\n")
    source.chmod(0o600)
    args = {
        "directories": [{"path": str(tmp_path / "tls")}],
        "files": [{"path": str(tmp_path / "tls/k"), "src": str(source), "mode": "0640"}],
    }
    assert run(capsys, **args)["changed_paths"] == [str(tmp_path / "tls"), str(tmp_path / "tls/k")]
    assert (tmp_path / "tls/k").read_bytes() == b"\x00key bytes\n" and mode_of(tmp_path / "tls/k") == 0o640
    assert run(capsys, **args)["changed"] is False
    source.write_bytes(b"renewed\n")
    assert run(capsys, **args)["changed_paths"] == [str(tmp_path / "tls/k")]
    assert (tmp_path / "tls/k").read_bytes() == b"renewed\n"


def test_a_missing_src_is_a_change_in_check_mode_and_an_error_otherwise(tmp_path, capsys):
    args = {"files": [{"path": str(tmp_path / "k"), "src": str(tmp_path / "not-yet")}]}
    assert run(capsys, check=True, diff=True, **args)["changed_paths"] == [str(tmp_path / "k")]
    failed = run(capsys, **args)
    assert failed["failed"] is True and "its source" in failed["msg"] and "does not exist" in failed["msg"]
    both = run(capsys, files=[{"path": str(tmp_path / "k"), "src": str(tmp_path / "x"), "content": "y"}])
    assert "either content or src" in both["msg"]
