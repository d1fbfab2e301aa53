import os
import stat

import pytest

from panfpn.utils.atomic import atomic_write, atomic_write_path, remove_stale_temp_files


def test_result_has_plain_open_permissions_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and path.read_bytes() == b"x"


def test_failed_path_writer_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("exporter crashed")

    with pytest.raises(RuntimeError, match="exporter crashed"):
        atomic_write_path(target, broken, suffix=".tmp.onnx")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_stale_temp_files_of_killed_writes_are_removed_by_target(tmp_path):
    # what a kill between mkstemp and os.replace leaves: mkstemp names beside their targets
    names = [".model_0000004.pth.ab12cd_9.tmp", ".last_checkpoint.zz99yy00.tmp", ".eval_results.json.q1w2e3r4.tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"half")
    keep = [tmp_path / "model_0000004.pth", tmp_path / ".hidden.tmp", tmp_path / "notes.tmp"]
    for path in keep:
        path.write_bytes(b"whole")
    removed = remove_stale_temp_files(tmp_path, ("model_*.pth", "last_checkpoint"))
    assert [p.name for p in removed] == sorted(names[:2])
    assert (tmp_path / names[2]).exists() and all(p.exists() for p in keep)
    assert [p.name for p in remove_stale_temp_files(tmp_path)] == [names[2]]
    assert remove_stale_temp_files(tmp_path / "absent") == []
