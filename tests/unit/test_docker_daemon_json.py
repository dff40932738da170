"""docker_daemon_json: merge into daemon.json, keep other keys, refuse broken files, honest changed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "docker_daemon_json", ROOT / "plugins" / "modules" / "docker_daemon_json.py"
)
ddj = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ddj)


def run(args: dict, capsys) -> dict:
    with patch_module_args(args), pytest.raises(SystemExit):
        ddj.main()
    return json.loads(capsys.readouterr().out)


def test_deep_merge_keeps_other_keys_and_merges_mappings():
    base = {"debug": True, "log-opts": {"labels": "team"}, "runtimes": {"other": {"path": "x"}}}
    merged = ddj.deep_merge(base, {"log-opts": {"max-size": "50m"}, "runtimes": {"nvidia": {"path": "y"}}})
    assert merged == {
        "debug": True,
        "log-opts": {"labels": "team", "max-size": "50m"},
        "runtimes": {"other": {"path": "x"}, "nvidia": {"path": "y"}},
    }
    assert base["log-opts"] == {"labels": "team"}  # the input is not modified


def test_creates_the_file_then_reports_no_change(tmp_path, capsys):
    path = tmp_path / "daemon.json"
    first = run({"path": str(path), "settings": {"live-restore": True}}, capsys)
    assert first["changed"] is True
    assert json.loads(path.read_text()) == {"live-restore": True}
    second = run({"path": str(path), "settings": {"live-restore": True}}, capsys)
    assert second["changed"] is False


def test_keeps_an_operators_keys(tmp_path, capsys):
    path = tmp_path / "daemon.json"
    path.write_text('{"default-shm-size": "1G", "log-opts": {"labels": "team"}}')
    result = run({"path": str(path), "settings": {"log-opts": {"max-size": "50m"}}}, capsys)
    assert result["changed"] is True
    assert json.loads(path.read_text()) == {"default-shm-size": "1G", "log-opts": {"labels": "team", "max-size": "50m"}}


def test_same_keys_in_another_layout_are_not_rewritten(tmp_path, capsys):
    path = tmp_path / "daemon.json"
    path.write_text('{"log-opts":{"max-size":"50m"},"live-restore":true}')
    result = run({"path": str(path), "settings": {"live-restore": True, "log-opts": {"max-size": "50m"}}}, capsys)
    assert result["changed"] is False
    assert path.read_text() == '{"log-opts":{"max-size":"50m"},"live-restore":true}'


def test_check_mode_reports_without_writing(tmp_path, capsys):
    path = tmp_path / "daemon.json"
    path.write_text('{"debug": true}')
    result = run({"path": str(path), "settings": {"live-restore": True}, "_ansible_check_mode": True}, capsys)
    assert result["changed"] is True
    assert path.read_text() == '{"debug": true}'


def test_broken_json_is_left_untouched(tmp_path, capsys):
    path = tmp_path / "daemon.json"
    path.write_text('{"debug": tru')
    result = run({"path": str(path), "settings": {"live-restore": True}}, capsys)
    assert result["failed"] is True
    assert "is not valid JSON" in result["msg"]
    assert path.read_text() == '{"debug": tru'


def test_failed_validation_keeps_the_old_file(tmp_path, capsys):
    path = tmp_path / "daemon.json"
    path.write_text('{"debug": true}')
    result = run({"path": str(path), "settings": {"live-restore": True}, "validate": "false %s"}, capsys)
    assert result["failed"] is True
    assert "failed validation" in result["msg"]
    assert path.read_text() == '{"debug": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["daemon.json"]  # no temporary file left


def test_validation_sees_the_new_file(tmp_path, capsys):
    path = tmp_path / "daemon.json"
    check = f"{sys.executable} -c 'import json,sys; assert json.load(open(sys.argv[1]))[\"live-restore\"]' %s"
    result = run({"path": str(path), "settings": {"live-restore": True}, "validate": check}, capsys)
    assert result["changed"] is True and not result.get("failed")
