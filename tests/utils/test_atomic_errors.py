"""A write that fails (disk full, file too large, permissions) names the file and the OS error and
leaves the previous files as they were: checkpoints and every other atomic write."""

import builtins
import errno
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from panfpn.engine.training import checkpoint as ck
from panfpn.utils import atomic
from panfpn.utils.atomic import AtomicWriteError, write_json_atomic
from process_helpers import run as run_in_group

ROOT = Path(__file__).resolve().parents[2]


def _temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


class _FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written, as on a full disk."""

    def __init__(self, f, room: int) -> None:
        self._f, self._room = f, room

    def write(self, data) -> int:
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.fixture
def fill_disk(monkeypatch):
    """Call it to make the files panfpn.utils.atomic opens for writing hold at most 1000 bytes."""
    def full_open(file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)
        return _FullDisk(f, 1000) if "w" in mode else f

    return lambda: monkeypatch.setattr(atomic, "open", full_open, raising=False)


def _previous_run(run: Path) -> None:
    ck.save_checkpoint(run, "model_0000002.pth", {"iteration": 2, "w": torch.ones(3)})


def _assert_previous_run_intact(run: Path) -> None:
    assert ck.load_training_checkpoint(ck.find_last_checkpoint(run))["iteration"] == 2
    assert (run / ck.LAST_CHECKPOINT).read_text() == "model_0000002.pth"
    assert _temp_files(run) == []


def test_a_full_disk_during_a_checkpoint_names_the_file_and_the_os_error(tmp_path, fill_disk):
    run = tmp_path / "run"
    _previous_run(run)
    fill_disk()
    with pytest.raises(AtomicWriteError) as err:  # torch.save alone says "unexpected pos 704 vs 598"
        ck.save_checkpoint(run, "model_0000004.pth", {"iteration": 4, "w": torch.zeros(10_000)})
    message = str(err.value)
    assert str(run / "model_0000004.pth") in message and "No space left on device" in message, message
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(run / "model_0000004.pth")
    assert isinstance(err.value, OSError)
    assert not (run / "model_0000004.pth").exists()
    _assert_previous_run_intact(run)


def test_a_full_disk_while_overwriting_keeps_the_previous_file(tmp_path, fill_disk):
    path = tmp_path / "results.json"
    path.write_text('{"old": true}')
    fill_disk()
    with pytest.raises(AtomicWriteError, match=rf"cannot write {path} .*No space left on device; "
                                               r"the previous results\.json is unchanged"):
        write_json_atomic(path, {"big": "x" * 5000})
    assert json.loads(path.read_text()) == {"old": True} and _temp_files(tmp_path) == []


def test_a_file_size_limit_of_the_os_names_the_checkpoint(tmp_path):
    """The kernel's own error (EFBIG under RLIMIT_FSIZE) through torch.save, in a child process."""
    run = tmp_path / "run"
    _previous_run(run)
    code = f"""
import resource, signal, torch
from panfpn.engine.training.checkpoint import save_checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get the EFBIG error instead of the signal
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
save_checkpoint({str(run)!r}, "model_0000004.pth", {{"iteration": 4, "w": torch.zeros(100000)}})
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = run_in_group([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("panfpn.utils.atomic.AtomicWriteError: cannot write"), done.stderr[-2000:]
    assert str(run / "model_0000004.pth") in last and "File too large" in last
    assert not (run / "model_0000004.pth").exists()
    _assert_previous_run_intact(run)


@pytest.mark.parametrize("err", [errno.EACCES, errno.EROFS])
def test_a_refused_rename_names_the_file(tmp_path, monkeypatch, err):
    path = tmp_path / "model_final.pth"
    ck.atomic_torch_save({"w": torch.ones(2)}, path)

    def refuse(src, dst):
        raise OSError(err, os.strerror(err), dst)

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(AtomicWriteError, match=rf"cannot write {path} \(renaming .*{os.strerror(err)}"):
        ck.atomic_torch_save({"w": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2)) and _temp_files(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder: its permissions "
                                                "cannot make the write fail")
def test_a_read_only_folder_names_the_file_not_the_temp_file(tmp_path):
    run = tmp_path / "run"
    _previous_run(run)
    run.chmod(0o555)
    try:
        with pytest.raises(AtomicWriteError, match=rf"cannot write {run / 'model_0000004.pth'} "
                                                   r"\(creating a temp file .*Permission denied"):
            ck.save_checkpoint(run, "model_0000004.pth", {"iteration": 4})
    finally:
        run.chmod(0o755)
    _assert_previous_run_intact(run)


def test_a_temp_file_that_cannot_be_created_names_the_target(tmp_path, monkeypatch):
    """What a read-only folder does for a user who is not root (mkstemp is refused)."""
    path = tmp_path / "model_final.pth"
    ck.atomic_torch_save({"w": torch.ones(2)}, path)

    def refuse(prefix, suffix, dir):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.path.join(dir, prefix + "x1" + suffix))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
    with pytest.raises(AtomicWriteError, match=rf"cannot write {path} \(creating a temp file .*Permission denied; "
                                               r"the previous model_final\.pth is unchanged"):
        ck.atomic_torch_save({"w": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))


def test_errors_that_are_not_the_os_s_pass_unchanged(tmp_path):
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "x.json", {"not json": object()})
    assert _temp_files(tmp_path) == [] and not (tmp_path / "x.json").exists()
