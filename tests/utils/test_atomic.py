import os
import stat

import pytest

from panfpn.utils.atomic import atomic_write, atomic_write_path


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
