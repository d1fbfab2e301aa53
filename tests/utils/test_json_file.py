"""The one JSON loader: each problem is one error type whose message names the file and the problem
(line and column of a syntax error), and the callers with error types of their own map it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from panfpn.utils.json_file import JSONFileError, JSONFileNotFoundError, load_json
from process_helpers import run as run_in_group

REPO = Path(__file__).resolve().parents[2]


def test_valid_file_and_expected_type(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"x": [1, 2.5, null, true]}')
    assert load_json(path, expect=dict) == {"x": [1, 2.5, None, True]}
    with pytest.raises(JSONFileError) as err:
        load_json(path, what="category list", expect=list)
    assert str(err.value) == f"category list {path} must hold a JSON array, got object"


def test_missing_file_is_also_a_file_not_found_error(tmp_path):
    path = tmp_path / "nowhere" / "a.json"
    with pytest.raises(JSONFileNotFoundError) as err:
        load_json(path, what="ground-truth JSON")
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, JSONFileError)
    assert str(err.value) == f"ground-truth JSON not found: {path}" and err.value.path == str(path)


def test_directory(tmp_path):
    with pytest.raises(JSONFileError, match=f"^JSON file {tmp_path} is a directory, not a file$"):
        load_json(tmp_path)


def test_unreadable_file(tmp_path, monkeypatch):
    """open() refused as for a file without read permission (chmod cannot show it to root)."""
    from panfpn.utils import json_file

    def refuse(path, mode="r"):
        raise PermissionError(13, "Permission denied", path)

    path = tmp_path / "locked.json"
    path.write_text("{}")
    monkeypatch.setattr(json_file, "open", refuse, raising=False)
    with pytest.raises(JSONFileError) as err:
        load_json(path)
    assert str(err.value) == f"JSON file {path} cannot be read: Permission denied"
    assert not isinstance(err.value, FileNotFoundError)


@pytest.mark.parametrize("content, problem", [
    (b'{"a": 1,\n  "b": }', r"is not valid JSON: Expecting value: line 2 column 8 \(char 16\)"),
    (b"", r"is not valid JSON: Expecting value: line 1 column 1"),
    (b'{"a": "\xff"}', r"is not valid JSON: not UTF-8 text \(invalid start byte at byte 7\)"),
])
def test_invalid_json_names_file_line_and_column(tmp_path, content, problem):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(JSONFileError, match=f"^annotation file {path} {problem}"):
        load_json(path, what="annotation file")


def test_merge_job_maps_it_to_a_config_error(tmp_path):
    from panfpn.engine.merge_run import _load_json
    from panfpn.utils.errors import ConfigError

    path = tmp_path / "instances.json"
    path.write_text("[1, 2")
    with pytest.raises(ConfigError, match=f"merge.instances_json {path} is not valid JSON: .*line 1 column 6"):
        _load_json(path, "merge.instances_json")


def test_compare_evals_reports_a_bad_file_in_one_line(tmp_path):
    good, bad = tmp_path / "a" / "eval_results.json", tmp_path / "b" / "eval_results.json"
    for path in (good, bad):
        path.parent.mkdir()
    good.write_text('{"panoptic": {"per_class": {}}}')
    bad.write_text('{"panoptic": ')
    proc = run_in_group([sys.executable, str(REPO / "tools" / "compare_evals.py"), str(good), str(bad),
                         "--out", str(tmp_path / "c.html")], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"eval results {bad} is not valid JSON: Expecting value: line 1 column 14 (char 13)"
